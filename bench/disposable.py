"""Disposable latency and idle app-qube memory of qlite, against baselines
measured in the same run on the same machine.

Run as root:  .venv/bin/python bench/disposable.py [--runs N] [--density N] [--json OUT]

Latency: p50 and p95 over --runs samples per case. The clock
(time.perf_counter) runs around subprocess.run of the whole command,
because that is what a user waits for.

  a. ``qlite run --disposable -- true``: default-dvm, which has a network.
  b. ``qlite run --dvm bench-dvm-off -- true``: an offline disposable
     template (``--netvm none``).
  c. ``podman run --rm --network=none --pull=never <template image> true``
     with the podman CLI on qlite's generated containers.conf. That config
     makes qlite's runsc wrapper the default runtime, and the bench checks
     this once with ``podman inspect``.
  d. ``runsc --network=none --platform=<probed> do true``: gVisor alone.
  e. Case c on a fresh labelled podman bridge network, for reference.

Why these baselines:

- A qlite disposable is, underneath, a podman container that runs under
  qlite's runsc wrapper.
- Case c is exactly that container with nothing of qlite around it: the same
  image, store, wrapper and runsc flags, and no network. So b/c is what qlite
  itself costs (CLI start-up, store rows, private volume, attach and cleanup).
- Case d is the floor: a gVisor sandbox with no container engine. It must use
  ``--network=none``, because gVisor's netstack fails on this kernel (see
  /work/shared/HOST-NOTES.md).
- Case e is case c plus a podman bridge, which a networked disposable also
  pays. So a/e is the like-for-like ratio for case a, and the table still
  reports every ratio against case c.
- The runs are interleaved (a, b, c, d, e, a, ...) after one untimed warm-up
  of each, so that drift of the machine hits every case alike.

Memory: N app qubes (``--netvm none``) are created, started and left to
settle. Two things are then measured:

- the drop in MemAvailable from before they were created to after they all
  run, divided by N;
- the PSS of each qube's gVisor processes (sentry with its systrap stubs, and
  gofer), with conmon reported separately.

The bench works in its own QLITE_HOME under /var/tmp. On exit, including
Ctrl-C and errors, it removes everything it made and checks by label that
nothing is left.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from qlite.state.owners import current_owner

REPO = Path(__file__).resolve().parent.parent
QLITE = (sys.executable, "-m", "qlite")
DEFAULT_JSON = REPO / "bench" / "results" / "disposable.json"
HOME_BASE = Path("/var/tmp")
DEFAULT_DVM = "default-dvm"
OFFLINE_DVM = "bench-dvm-off"
IDLE_PREFIX = "bench-idle-"
TEMPLATE = "debian-12"
EXPECTED_RUNTIME = "qlite-runsc"
CMD_TIMEOUT_S = 120
SETTLE_S = 3.0
MIB_PER_KIB = 1 / 1024
BASELINE = "c"
# The bench's own engine objects carry this owner tag. qlite's reconcile
# then sees them as belonging to a live process and leaves them alone, and
# the bench removes them itself on exit.
OWNER = current_owner()

PUBLISHED = {
    "source": "qubes-core-admin tests-data/dispvm_perf (Qubes R4.3, laptop)",
    "qubes_disposable_cold_s": 6.5,
    "qubes_disposable_preloaded_s": 2.3,
    "qubes_appvm_default_memory_mb": 400,
}


class BenchError(Exception):
    """A step of the bench failed; the numbers would be meaningless."""


# --------------------------------------------------------------------------
# Running commands


def run(argv: list[str], env: dict[str, str], cwd: Path, *, check: bool = True,
        timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {last_line(proc.stderr or proc.stdout)}")
    return proc


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def home_hash(path: Path) -> str:
    """The label value that qlite puts on this home's engine objects, computed
    the way qlite.paths.Paths.home_hash does it."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]


@dataclass
class BenchHome:
    """The bench's own QLITE_HOME, and a record of what was made in it."""

    path: Path
    qubes: list[str] = field(default_factory=list)
    network: str | None = None

    @property
    def hash(self) -> str:
        return home_hash(self.path)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("QLITE_ENGINE", "CONTAINERS_CONF")}
        return {**env, "QLITE_HOME": str(self.path)}

    @property
    def podman_env(self) -> dict[str, str]:
        """The podman CLI on qlite's containers.conf: the same store, and
        qlite's runsc wrapper as the default runtime."""
        return {**self.env, "CONTAINERS_CONF": str(self.path / "run" / "containers.conf")}

    def label_args(self) -> list[str]:
        return ["--label", f"qlite.home={self.hash}", "--label", f"qlite.owner={OWNER}"]

    def qlite(self, *args: str, check: bool = True, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
        return run([*QLITE, *args], self.env, self.path, check=check, timeout=timeout)

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["podman", *args], self.podman_env, self.path, check=check)

    def qlite_json(self, *args: str) -> object:
        return json.loads(self.qlite(*args, "--json").stdout)


# --------------------------------------------------------------------------
# Setting up


@dataclass(frozen=True)
class Setup:
    image_id: str
    probe: dict
    netpath: str


def prepare(home: BenchHome) -> Setup:
    """Set the home up, create the offline disposable template and the
    bench network, and check that the baseline uses qlite's runtime."""
    home.qubes.append(DEFAULT_DVM)  # setup creates it; the bench removes it
    home.qlite("setup", "--quiet", timeout=1800)
    home.qubes.append(OFFLINE_DVM)
    home.qlite("create", OFFLINE_DVM, "--netvm", "none", "--prop", "template_for_dispvms=True",
               "--label", "gray")
    home.network = f"qlite-{home.hash}-bench-net"
    home.podman("network", "create", *home.label_args(), home.network)
    image_id = template_image_id(home)
    check_runtime(home, image_id)
    probe = json.loads((home.path / "run" / "probe.json").read_text())
    rows = home.qlite_json("ls")
    netpath = next(r["netpath"] for r in rows if r["name"] == DEFAULT_DVM)
    return Setup(image_id=image_id, probe=probe, netpath=netpath)


def template_image_id(home: BenchHome) -> str:
    for row in home.qlite_json("template", "list"):
        if row["name"] == TEMPLATE:
            return row["image_id"]
    raise BenchError(f"qlite setup left no {TEMPLATE} template")


def check_runtime(home: BenchHome, image_id: str) -> None:
    cid = home.podman("create", *home.label_args(), "--network=none", "--pull=never",
                      image_id, "true").stdout.strip()
    try:
        runtime = home.podman("inspect", "--format", "{{.OCIRuntime}}", cid).stdout.strip()
    finally:
        home.podman("rm", "-f", cid, check=False)
    if runtime != EXPECTED_RUNTIME:
        raise BenchError(f"the baseline container runs under {runtime!r}, not {EXPECTED_RUNTIME!r}")


# --------------------------------------------------------------------------
# Latency


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    argv: tuple[str, ...]
    env: dict[str, str]


def latency_cases(home: BenchHome, setup: Setup) -> list[Case]:
    podman_run = ("podman", "run", "--rm", "--pull=never", *home.label_args())
    # runsc do mounts the host's / read-only under a tmpfs overlay and runs
    # the command in the current directory, so it runs from the bench home.
    # As root it needs no --rootless flag. Its state goes into the bench
    # home, so a run that is cut short leaves nothing in /var/run/runsc.
    runsc_do = (setup.probe["runsc"], f"--root={home.path / 'runsc-state'}", "--network=none",
                f"--platform={setup.probe['platform']}", "do", "true")
    return [
        Case("a", "qlite run --disposable (default-dvm, network)",
             (*QLITE, "run", "--disposable", "--", "true"), home.env),
        Case("b", f"qlite run --dvm {OFFLINE_DVM} (offline)",
             (*QLITE, "run", "--dvm", OFFLINE_DVM, "--", "true"), home.env),
        Case("c", "podman run --rm --network=none, qlite-runsc",
             (*podman_run, "--network=none", setup.image_id, "true"), home.podman_env),
        Case("d", "runsc --network=none do true",
             runsc_do, home.env),
        Case("e", "podman run --rm, bridge network, qlite-runsc",
             (*podman_run, f"--network={home.network}", setup.image_id, "true"), home.podman_env),
    ]


def time_once(case: Case, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(case.argv, env=case.env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"case {case.key} ({case.label}) exited {proc.returncode}: "
                         f"{last_line(proc.stderr or proc.stdout)}")
    return elapsed


def measure_latency(cases: list[Case], runs: int, cwd: Path) -> dict[str, list[float]]:
    for case in cases:
        time_once(case, cwd)  # warm-up: page cache, podman's first-use setup
    samples: dict[str, list[float]] = {c.key: [] for c in cases}
    for i in range(runs):
        for case in cases:
            samples[case.key].append(time_once(case, cwd))
        print(f"  latency round {i + 1}/{runs} done", file=sys.stderr, flush=True)
    return samples


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    """Linear interpolation between order statistics (the 'inclusive' method)."""
    return statistics.quantiles(xs, n=100, method="inclusive")[94]


# --------------------------------------------------------------------------
# Idle memory


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise BenchError("no MemAvailable in /proc/meminfo")


def start_idle_qubes(home: BenchHome, density: int) -> tuple[list[str], float]:
    names = [f"{IDLE_PREFIX}{i:02d}" for i in range(1, density + 1)]
    for name in names:
        home.qubes.append(name)
        home.qlite("create", name, "--netvm", "none", "--label", "gray")
    start = time.perf_counter()
    home.qlite("start", *names, timeout=CMD_TIMEOUT_S + 10 * density)
    return names, time.perf_counter() - start


def wait_running(home: BenchHome, names: list[str], timeout: float = CMD_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {r["name"]: r["state"] for r in home.qlite_json("ls")}
        if all(states.get(n) == "Running" for n in names):
            return
        time.sleep(0.5)
    raise BenchError(f"the idle qubes were not all Running after {timeout:.0f}s")


def idle_container_ids(home: BenchHome) -> dict[str, str]:
    """Full container id of each idle qube, by qube name."""
    out = home.podman("ps", "--no-trunc", "--filter", f"label=qlite.home={home.hash}",
                      "--format", "{{.ID}} {{.Names}}").stdout
    prefix = f"qlite-{home.hash}-{IDLE_PREFIX}"
    ids = {}
    for line in out.splitlines():
        cid, _, name = line.partition(" ")
        if name.startswith(prefix):
            ids[name.removeprefix(f"qlite-{home.hash}-")] = cid
    return ids


def rollup_kib(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup; empty if PID is gone."""
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


def process_table() -> list[tuple[int, str, str]]:
    """(pid, comm, command line) of every process."""
    table = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        table.append((proc.info["pid"], proc.info["name"] or "", " ".join(proc.info["cmdline"] or ())))
    return table


def descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def container_processes(cid: str, table: list[tuple[int, str, str]]) -> dict[str, set[int]]:
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
    kinds: dict[str, set[int]] = {k: set() for k in ("sandbox", "gofer", "stubs", "other", "conmon")}
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


def pss_mib(pids: set[int]) -> float:
    return sum(rollup_kib(pid).get("Pss", 0) for pid in pids) * MIB_PER_KIB


def uss_mib(pids: set[int]) -> float:
    rollups = [rollup_kib(pid) for pid in pids]
    return sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rollups) * MIB_PER_KIB


def qube_usage(cid: str, table: list[tuple[int, str, str]]) -> dict[str, float]:
    kinds = container_processes(cid, table)
    gvisor = kinds["sandbox"] | kinds["gofer"] | kinds["stubs"] | kinds["other"]
    if not kinds["sandbox"]:
        raise BenchError(f"no runsc-sandbox process found for container {cid[:12]}")
    usage: dict[str, float] = {
        "gvisor_pss_mib": pss_mib(gvisor),
        "gvisor_uss_mib": uss_mib(gvisor),
        "conmon_pss_mib": pss_mib(kinds["conmon"]),
    }
    for kind, pids in kinds.items():
        usage[f"{kind}_processes"] = len(pids)
        if kind != "conmon":
            usage[f"{kind}_pss_mib"] = pss_mib(pids)
    return usage


def measure_memory(home: BenchHome, density: int) -> dict:
    before = mem_available_kib()
    names, start_s = start_idle_qubes(home, density)
    wait_running(home, names)
    time.sleep(SETTLE_S)
    after = mem_available_kib()
    ids = idle_container_ids(home)
    if sorted(ids) != sorted(names):
        raise BenchError(f"found containers for {sorted(ids)}, expected {names}")
    table = process_table()
    per_qube = {name: qube_usage(cid, table) for name, cid in sorted(ids.items())}
    return {
        "start_all_s": start_s,
        "memavailable_drop_mib": (before - after) * MIB_PER_KIB / density,
        "per_qube": per_qube,
    }


# --------------------------------------------------------------------------
# Results


def host_facts(home: BenchHome, setup: Setup) -> dict:
    podman_version = home.podman("version", "--format", "{{.Client.Version}}").stdout.strip()
    return {
        "kernel": platform.release(),
        "runsc_version": setup.probe["version"],
        "platform": setup.probe["platform"],
        "netpath": setup.netpath,
        "podman_version": podman_version,
        "cpu_count": os.cpu_count(),
        "mem_total_mib": round(psutil.virtual_memory().total / 2**20),
    }


def mean_of(per_qube: dict[str, dict], key: str) -> float:
    return statistics.fmean(q[key] for q in per_qube.values())


def build_result(args: argparse.Namespace, facts: dict, cases: list[Case],
                 samples: dict[str, list[float]], memory: dict) -> dict:
    base = p50(samples[BASELINE])
    per_qube = memory["per_qube"]
    return {
        "qlite_p50_s": p50(samples["a"]), "qlite_p95_s": p95(samples["a"]),
        "qlite_offline_p50_s": p50(samples["b"]), "qlite_offline_p95_s": p95(samples["b"]),
        "podman_runsc_p50_s": base, "podman_runsc_p95_s": p95(samples["c"]),
        "runsc_do_p50_s": p50(samples["d"]), "runsc_do_p95_s": p95(samples["d"]),
        "podman_runsc_net_p50_s": p50(samples["e"]), "podman_runsc_net_p95_s": p95(samples["e"]),
        "ratio_qlite_to_podman_p50": p50(samples["a"]) / base,
        "ratio_qlite_offline_to_podman_p50": p50(samples["b"]) / base,
        "ratio_qlite_to_podman_net_p50": p50(samples["a"]) / p50(samples["e"]),
        "idle_qube_pss_mib": mean_of(per_qube, "gvisor_pss_mib"),
        "idle_qube_uss_mib": mean_of(per_qube, "gvisor_uss_mib"),
        "idle_qube_sentry_pss_mib": mean_of(per_qube, "sandbox_pss_mib") + mean_of(per_qube, "stubs_pss_mib"),
        "idle_qube_gofer_pss_mib": mean_of(per_qube, "gofer_pss_mib"),
        "idle_qube_memavailable_drop_mib": memory["memavailable_drop_mib"],
        "conmon_pss_mib": mean_of(per_qube, "conmon_pss_mib"),
        "idle_start_all_s": memory["start_all_s"],
        "runs": args.runs, "density": args.density,
        **facts,
        "cases": {c.key: {"label": c.label, "argv": list(c.argv)} for c in cases},
        "samples_s": samples,
        "idle_per_qube": per_qube,
        "published_not_measured_here": PUBLISHED,
    }


def render(result: dict) -> None:
    r = result
    print(f"\nqlite disposable bench: {r['runs']} interleaved runs per case after one warm-up each")
    print(f"host: kernel {r['kernel']}, {r['cpu_count']} CPUs, {r['mem_total_mib']} MiB, runsc {r['runsc_version']} "
          f"({r['platform']}), podman {r['podman_version']}, netpath {r['netpath']}\n")
    print(f"{'case':<52} {'p50 s':>7} {'p95 s':>7} {'/ c p50':>8}")
    base = r["podman_runsc_p50_s"]
    for key, case in r["cases"].items():
        xs = r["samples_s"][key]
        print(f"{key}  {case['label']:<49} {p50(xs):>7.3f} {p95(xs):>7.3f} {p50(xs) / base:>7.2f}x")
    print(f"\n   a / e (networked qlite vs networked podman): {r['ratio_qlite_to_podman_net_p50']:.2f}x")
    print(f"\nmemory: {r['density']} idle app qubes (--netvm none), started by one 'qlite start' "
          f"in {r['idle_start_all_s']:.1f} s")
    print(f"  MemAvailable drop per qube             {r['idle_qube_memavailable_drop_mib']:7.1f} MiB")
    print(f"  gVisor PSS per qube (mean)             {r['idle_qube_pss_mib']:7.1f} MiB"
          f"   (sentry+stubs {r['idle_qube_sentry_pss_mib']:.1f}, gofer {r['idle_qube_gofer_pss_mib']:.1f};"
          f" USS {r['idle_qube_uss_mib']:.1f})")
    print(f"  conmon PSS per qube                    {r['conmon_pss_mib']:7.1f} MiB")
    p = r["published_not_measured_here"]
    print(f"\nQubes OS, PUBLISHED figures, NOT measured here ({p['source']}):")
    print(f"  disposable: {p['qubes_disposable_cold_s']} s cold, {p['qubes_disposable_preloaded_s']} s preloaded;"
          f" an AppVM's default memory: {p['qubes_appvm_default_memory_mb']} MB")


def write_json(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON written to {out}")


# --------------------------------------------------------------------------
# Cleaning up


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleanup must not be cut short by a second Ctrl-C. The commands it
    runs inherit the ignored SIGINT too, so they are not cut short either."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def attempt(step: Callable[[], object]) -> None:
    """Run one cleanup step; a failing step must not stop the others."""
    try:
        step()
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"warning: cleanup step failed: {exc}", file=sys.stderr)


def podman_leftovers(label: str, env: dict[str, str], cwd: Path) -> dict[str, list[str]]:
    """Names of containers, volumes and networks that carry LABEL."""
    listings = {
        "containers": ["ps", "-a", "--format", "{{.Names}}"],
        "volumes": ["volume", "ls", "--format", "{{.Name}}"],
        "networks": ["network", "ls", "--format", "{{.Name}}"],
    }
    return {
        kind: run(["podman", *args, "--filter", f"label={label}"], env, cwd, check=False).stdout.split()
        for kind, args in listings.items()
    }


def remove_leftovers(home: BenchHome) -> None:
    """Whatever an interrupted run left behind, by this home's label."""
    removers = {"containers": ["rm", "-f"], "volumes": ["volume", "rm", "-f"], "networks": ["network", "rm", "-f"]}
    for kind, names in podman_leftovers(f"qlite.home={home.hash}", home.podman_env, home.path).items():
        for name in names:
            home.podman(*removers[kind], name, check=False)


def teardown(home: BenchHome) -> None:
    with signals_ignored():
        if home.path.exists():
            # default-dvm cannot be removed while it is the global default_dispvm.
            attempt(lambda: home.qlite("prefs", "--global", "default_dispvm", "none", check=False))
            for name in reversed(home.qubes):
                attempt(lambda name=name: home.qlite("remove", "--force", name, check=False))
            if home.network:
                attempt(lambda: home.podman("network", "rm", "-f", home.network, check=False))
            # Release this home's hold on the shared template image (its tag).
            attempt(lambda: home.qlite("prefs", "--global", "-D", "default_template", check=False))
            attempt(lambda: home.qlite("template", "remove", "debian-12", check=False))
            attempt(lambda: home.qlite("reconcile", check=False))
            attempt(lambda: remove_leftovers(home))
            attempt(lambda: home.qlite("daemon", "stop", check=False))
            attempt(lambda: home.qlite("service", "stop", check=False))
        shutil.rmtree(home.path, ignore_errors=True)
        verify_clean(home)


def verify_clean(home: BenchHome) -> None:
    # The home (and its containers.conf) is gone: list with the host's podman
    # configuration, which reads the same store.
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
    left = podman_leftovers(f"qlite.home={home.hash}", env, Path("/"))
    if any(left.values()):
        print(f"WARNING: engine objects of bench home {home.hash} are left: {left}", file=sys.stderr)
    else:
        print(f"cleanup: nothing labelled qlite.home={home.hash} is left", file=sys.stderr)


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency case (default 20)")
    parser.add_argument("--density", type=int, default=20, help="idle app qubes to start (default 20)")
    parser.add_argument("--json", type=Path, default=None, help=f"write results here (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    if args.runs < 2 or args.density < 1:
        parser.error("--runs must be at least 2 and --density at least 1")
    if args.runs < 20:
        print("warning: a p95 over fewer than 20 runs is not meaningful", file=sys.stderr)
    return args


def run_bench(home: BenchHome, args: argparse.Namespace) -> dict:
    print(f"bench home {home.path} (label qlite.home={home.hash})", file=sys.stderr)
    setup = prepare(home)
    cases = latency_cases(home, setup)
    samples = measure_latency(cases, args.runs, home.path)
    memory = measure_memory(home, args.density)
    return build_result(args, host_facts(home, setup), cases, samples, memory)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/disposable.py must run as root (qlite's podman service is rootful)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    home = BenchHome(Path(tempfile.mkdtemp(prefix="qlite-bench-", dir=HOME_BASE)).resolve())
    try:
        result = run_bench(home, args)
        render(result)
        write_json(result, args.json or DEFAULT_JSON)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        teardown(home)


if __name__ == "__main__":
    sys.exit(main())
