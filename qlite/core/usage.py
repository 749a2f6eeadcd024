"""What each running qube costs the host: memory and CPU of its processes.

A qube's processes are found by its container id, which conmon, runsc's
sandbox and gofer all carry on their command lines; the benchmark
(bench/disposable.py) attributes processes with the same functions, so the
TUI and the published numbers count alike.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

from qlite.core.qubes import QubeManager
from qlite.domain.context import Context

MIB_PER_KIB = 1 / 1024
KINDS = ("sandbox", "gofer", "stubs", "other", "conmon")

ProcessTable = list[tuple[int, str, str]]


@dataclass(frozen=True)
class Usage:
    """One qube's processes: resident and proportional memory, and CPU
    (percent of one CPU since the previous sample; 0.0 on the first)."""

    rss_mib: float
    pss_mib: float
    cpu_percent: float
    processes: int


def process_table() -> ProcessTable:
    """(pid, comm, command line) of every process."""
    table = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        table.append((proc.info["pid"], proc.info["name"] or "", " ".join(proc.info["cmdline"] or ())))
    return table


def descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def container_processes(cid: str, table: ProcessTable) -> dict[str, set[int]]:
    """The pids of container CID's processes, by kind: sandbox, gofer, stubs,
    other (any other runsc process) and conmon.

    How processes are attributed to a qube:

    - conmon, runsc-gofer and runsc-sandbox all carry the full 64-hex
      container id on their command lines. conmon has it in ``-c``/``-u``.
      The runsc processes have it in ``--bundle=.../overlay-containers/<id>/userdata``,
      and the sandbox also as its last argument.
    - The systrap stub processes are children of runsc-sandbox, and their
      command line is empty. So every descendant of a matched runsc process
      counts as gVisor too. (The sentry's memory file is shared with the
      stubs, and PSS splits it between them rather than counting it twice.)
    - The runsc wrapper is a shell script that execs runsc, and runsc
      create/start exit once the container runs. An idle qube therefore has
      no wrapper or monitor process left. If one were still alive it would
      carry the id and be counted under "other".
    - conmon's own children are the runsc processes, so conmon is counted
      alone, by its comm name.
    """
    kinds: dict[str, set[int]] = {k: set() for k in KINDS}
    if not cid:
        return kinds
    for pid, comm, cmdline in table:
        if cid not in cmdline:
            continue
        if comm == "conmon":
            kinds["conmon"].add(pid)
        elif cmdline.startswith(("runsc-sandbox", "runsc-gofer")):
            kinds[cmdline.split(None, 1)[0].removeprefix("runsc-")].add(pid)
        else:
            kinds["other"].add(pid)
    runsc = kinds["sandbox"] | kinds["gofer"] | kinds["other"]
    for pid in runsc:
        kinds["stubs"] |= descendants(pid)
    kinds["stubs"] -= runsc | kinds["conmon"]
    return kinds


def all_pids(kinds: dict[str, set[int]]) -> set[int]:
    return set().union(*kinds.values())


def rollup_kib(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup; empty if PID is gone (or
    not ours to read)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[key] = int(parts[0])
    except OSError:
        return {}
    return fields


def pss_mib(pids: set[int]) -> float:
    return sum(rollup_kib(pid).get("Pss", 0) for pid in pids) * MIB_PER_KIB


def uss_mib(pids: set[int]) -> float:
    rollups = [rollup_kib(pid) for pid in pids]
    return sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rollups) * MIB_PER_KIB


def memory_mib(pids: set[int]) -> tuple[float, float]:
    """(RSS, PSS) of PIDS. Without smaps_rollup (another user's processes)
    RSS comes from psutil and stands in for PSS."""
    rss = pss = 0.0
    for pid in pids:
        rollup = rollup_kib(pid)
        if rollup:
            rss += rollup.get("Rss", 0) * MIB_PER_KIB
            pss += rollup.get("Pss", 0) * MIB_PER_KIB
            continue
        try:
            resident = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            continue
        rss += resident
        pss += resident
    return rss, pss


class CpuSampler:
    """CPU use is the change between two samples, so the psutil.Process
    objects (which remember their last CPU times) are kept from one sample
    to the next. One sampler per refreshing loop; it is thread-safe."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()

    def percent(self, pids: set[int]) -> float:
        """Percent of one CPU used by PIDS since the previous call (a pid
        seen for the first time counts 0)."""
        total = 0.0
        with self._lock:
            for pid in pids:
                proc = self._procs.get(pid)
                try:
                    if proc is None or not proc.is_running():  # new, or the pid was reused
                        proc = self._procs[pid] = psutil.Process(pid)
                    total += proc.cpu_percent(None)
                except psutil.Error:
                    self._procs.pop(pid, None)
        return total

    def forget_all_but(self, pids: set[int]) -> None:
        with self._lock:
            for pid in set(self._procs) - pids:
                del self._procs[pid]


def vm_pids(ctx: Context, qube: str) -> set[int]:
    """A VM qube's QEMU and supervisor (its network holder is counted as a
    container); both write their pids in the VM's run directory."""
    out = set()
    for name in ("qemu.pid", "supervisor.pid"):
        try:
            pid = int((ctx.paths.vm_run_dir(qube) / name).read_text())
        except (OSError, ValueError):
            continue
        if psutil.pid_exists(pid):
            out.add(pid)
    return out


def qube_usage(ctx: Context, sampler: CpuSampler | None = None, containers: dict | None = None) -> dict[str, Usage]:
    """Usage of every running qube of this home, by qube name. CPU percent
    needs a SAMPLER kept between calls; without one it is 0.0. CONTAINERS
    (QubeManager.containers()) may be passed when the caller has them."""
    if containers is None:
        containers = QubeManager(ctx).containers()
    running = {name: c for name, c in containers.items() if c.state in ("running", "paused") and c.id}
    if not running:
        if sampler is not None:
            sampler.forget_all_but(set())
        return {}
    table = process_table()
    out: dict[str, Usage] = {}
    seen: set[int] = set()
    for name, info in running.items():
        pids = all_pids(container_processes(info.id, table))
        if info.labels.get("qlite.mode") == "vm":
            pids |= vm_pids(ctx, name)
        seen |= pids
        rss, pss = memory_mib(pids)
        cpu = sampler.percent(pids) if sampler is not None else 0.0
        out[name] = Usage(rss_mib=rss, pss_mib=pss, cpu_percent=cpu, processes=len(pids))
    if sampler is not None:
        sampler.forget_all_but(seen)
    return out
