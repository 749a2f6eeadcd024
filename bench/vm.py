"""VM-mode qubes (QEMU) against container qubes (gVisor): boot to first
command, disposables and idle memory, measured in the same run on the same
machine.

Run as root:  .venv/bin/python bench/vm.py [--runs N] [--json OUT]

Latency: p50 and p95 over --runs samples per case. The clock
(time.perf_counter) runs around subprocess.run of each whole command,
because that is what a user waits for.

  a. VM qube ``vmq`` (``qlite create vmq --label blue --mode vm --netvm none``):
     ``qlite start vmq`` alone, and ``qlite start vmq`` followed by
     ``qlite run vmq -- true``, timed together (boot to first command).
     ``qlite shutdown vmq`` after each run is not timed.
  b. The same for container qube ``cq`` (``--netvm none``, no ``--mode``):
     the baseline. Both qubes have the same template, memory and vcpus.
  c. ``qlite run --disposable --mode vm --dvm bench-dvm-off -- true``: a VM
     disposable from an offline disposable template (``--netvm none``).
  d. ``qlite run --dvm bench-dvm-off -- true``: the container disposable
     from that same template: the baseline for c.

Why these baselines: a container qube is what a VM qube replaces, so a/b and
c/d are what the hypervisor boundary costs, everything else (template,
store, CLI, private volume) being the same. A VM qube also runs a network
holder container (the same gVisor container as a container qube, idle) so
that it keeps its place on the qube network, and a supervisor process that
owns QEMU; both are inside every VM number here.

The first VM start in a fresh home unpacks the kernel (downloading it
first if the shared cache lacks it) and exports the template into a root
disk (10-20 s here with the kernel cached), so every case first gets one
untimed warm-up. The warm-ups run ``uname -r`` instead of ``true``, and the
bench checks that the VM cases answer with the VM kernel's version and the
container cases with another (gVisor's), so a path that silently fell back
to a container cannot pass as a VM. The timed runs are then interleaved
(a, b, c, d, a, ...) so that drift of the machine hits every case alike.
TCG boots are CPU-bound, so other guests running on a small host slow them
down; the 1-minute load average before and after is printed with the host.
A VM that does not boot fails the bench, as any failed step does (qlite
gives a boot up to 300 s).

Memory: ``vmq`` and ``cq`` are started and left idle for a few seconds.
Then the PSS (from /proc/PID/smaps_rollup) is measured of:

- the VM: its QEMU process (pid in $QLITE_HOME/run/vm/vmq/qemu.pid), its
  supervisor (run/vm/vmq/supervisor.pid) and the gVisor processes of its
  network holder (sentry with its systrap stubs, and gofer);
- the container qube: its gVisor processes, attributed exactly as
  bench/disposable.py and the TUI do (qlite/core/usage.py).

conmon (one per container, the holder's too) is reported apart, as in
bench/disposable.py. QEMU's PSS is also split by mapping (from
/proc/PID/smaps): the guest's RAM, which QEMU allocates lazily, so it is
what the idle guest has touched; TCG's translated-code cache (anonymous rwx
mappings), which KVM does not need; and the rest, QEMU itself.

Accelerator: the VM runs under KVM if qlite's probe says KVM can run a
standard guest here, else under TCG (emulation). The bench reads the probe
the way qlite.vm.runner.VmRunner.accel does (the cached result in
/run/qlite-kvm-probe.json, see qlite/runtime/kvm.py) and the accel= that
the running QEMU was actually given, and prints it in the table heading.
Where /dev/kvm exists but cannot run standard guests (a PVM host, for
instance; ``qlite doctor`` says so), the VM numbers are TCG.
To measure with KVM, e.g. on a laptop, run the bench on a host where
``qlite doctor`` says the kvm check is ok; ``QLITE_VM_ACCEL=kvm|tcg`` in the
bench's environment forces the accelerator (it is passed on to qlite).

The bench works in its own QLITE_HOME under /var/tmp, which adopts the
shared debian-12 template through ``qlite setup``. On exit, including
Ctrl-C and errors, it removes everything it made and checks by label that
nothing is left.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The script runs as `python bench/vm.py`, which puts bench/ on sys.path;
# this keeps `python -P` (safe path) working too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    QLITE,
    REPO,
    BenchError,
    BenchHome,
    bench_main,
    create_qube,
    host_facts,
    last_line,
    p50,
    p95,
    parse_runs_args,
    setup_home,
)

from qlite.core.usage import (
    container_processes,
    process_table,
    pss_mib,
    uss_mib,
)
from qlite.runtime.kvm import cached_probe
from qlite.vm.runner import KVM_CACHE

DEFAULT_JSON = REPO / "bench" / "results" / "vm.json"
OFFLINE_DVM = "bench-dvm-off"
VM_QUBE = "vmq"
CT_QUBE = "cq"
SETTLE_S = 5.0
# A TCG boot takes ~5 s here; a hung one is cut off by the supervisor (300 s).
BOOT_TIMEOUT_S = 330
SHUTDOWN_TIMEOUT_S = 120


# --------------------------------------------------------------------------
# Setting up


def prepare(home: BenchHome) -> None:
    """Set the home up and create the offline disposable template, the VM
    qube and the container qube."""
    setup_home(home)
    create_qube(home, OFFLINE_DVM, "--label", "red", "--netvm", "none", "--prop", "template_for_dispvms=true")
    create_qube(home, VM_QUBE, "--label", "blue", "--mode", "vm", "--netvm", "none")
    create_qube(home, CT_QUBE, "--label", "blue", "--netvm", "none")
    rows = {r["name"]: r for r in home.qlite_json("ls")}
    for name, mode in ((VM_QUBE, "vm"), (CT_QUBE, "container"), (OFFLINE_DVM, "container")):
        if rows[name]["mode"] != mode:
            raise BenchError(f"{name} is in mode {rows[name]['mode']!r}, expected {mode!r}")
    vm, ct = rows[VM_QUBE], rows[CT_QUBE]
    if (vm["memory"], vm["vcpus"], vm["template"]) != (ct["memory"], ct["vcpus"], ct["template"]):
        raise BenchError(f"{VM_QUBE} and {CT_QUBE} differ in memory, vcpus or template")


def qemu_version() -> str:
    proc = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    return proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else "unknown"


def vm_kernel_version(home: BenchHome) -> str:
    """The version of the kernel VM qubes boot (unpacked by the first start)."""
    versions = sorted(p.name for p in (home.path / "vm" / "kernel" / "lib" / "modules").glob("*"))
    if not versions:
        raise BenchError("no VM kernel was unpacked in the bench home")
    return versions[-1]


# --------------------------------------------------------------------------
# Latency


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    vm: bool
    qube: str | None  # a qube to start and shut down; None for a disposable
    argv: tuple[str, ...]  # the command run, after `--`


def latency_cases() -> list[Case]:
    return [
        Case("a", f"qlite start {VM_QUBE}; qlite run {VM_QUBE} -- true (VM)", True, VM_QUBE, ()),
        Case("b", f"qlite start {CT_QUBE}; qlite run {CT_QUBE} -- true (container)", False, CT_QUBE, ()),
        Case(
            "c",
            f"qlite run --disposable --mode vm --dvm {OFFLINE_DVM} -- true",
            True,
            None,
            ("run", "--disposable", "--mode", "vm", "--dvm", OFFLINE_DVM, "--"),
        ),
        Case("d", f"qlite run --dvm {OFFLINE_DVM} -- true", False, None, ("run", "--dvm", OFFLINE_DVM, "--")),
    ]


def timed(home: BenchHome, what: str, *args: str, timeout: float = BOOT_TIMEOUT_S) -> tuple[float, str]:
    """Seconds that `qlite ARGS` took, and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*QLITE, *args],
        env=home.env,
        cwd=home.path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(
            f"{what}: qlite {' '.join(args)} exited {proc.returncode}: {last_line(proc.stderr or proc.stdout)}"
        )
    return elapsed, proc.stdout


def shut_down(home: BenchHome, qube: str) -> None:
    home.qlite("shutdown", qube, timeout=SHUTDOWN_TIMEOUT_S)
    state = next(r["state"] for r in home.qlite_json("ls") if r["name"] == qube)
    if state != "Halted":
        raise BenchError(f"{qube} is {state} after qlite shutdown")


def boot_once(home: BenchHome, case: Case, command: tuple[str, ...]) -> tuple[float, float, str]:
    """(start alone, start + first command, the command's stdout) of CASE's
    qube, which is shut down again afterwards (not timed)."""
    assert case.qube is not None
    # On a failure the qube is left running: the teardown removes it.
    start_s, _ = timed(home, case.label, "start", case.qube)
    run_s, out = timed(home, case.label, "run", case.qube, "--", *command)
    shut_down(home, case.qube)
    return start_s, start_s + run_s, out


def once(home: BenchHome, case: Case, command: tuple[str, ...]) -> tuple[float | None, float, str]:
    if case.qube is not None:
        return boot_once(home, case, command)
    elapsed, out = timed(home, case.label, *case.argv, *command)
    return None, elapsed, out


def warm_up(home: BenchHome, cases: list[Case]) -> tuple[dict[str, float], str]:
    """One untimed run of each case, running `uname -r`: the VM cases must
    answer with the VM kernel's version and the container cases must not.
    Returns the warm-up times (the first VM start includes the one-off
    kernel unpack and root disk export) and the VM kernel version."""
    times, kernels = {}, {}
    for case in cases:
        print(f"  warm-up {case.key} (uname -r): {case.label}", file=sys.stderr, flush=True)
        _, times[case.key], out = once(home, case, ("uname", "-r"))
        kernels[case.key] = last_line(out)
    vm_kernel = vm_kernel_version(home)
    for case in cases:
        if (kernels[case.key] == vm_kernel) != case.vm:
            raise BenchError(
                f"case {case.key} ({case.label}) runs on kernel {kernels[case.key]!r}; the VM kernel is {vm_kernel!r}"
            )
    return times, vm_kernel


def measure_latency(home: BenchHome, cases: list[Case], runs: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for c in cases:
        samples[c.key] = []
        if c.qube is not None:
            samples[f"{c.key}_start"] = []
    for i in range(runs):
        round_start = time.monotonic()
        for case in cases:
            start_s, total_s, _ = once(home, case, ("true",))
            samples[case.key].append(total_s)
            if start_s is not None:
                samples[f"{case.key}_start"].append(start_s)
        print(
            f"  latency round {i + 1}/{runs} done ({time.monotonic() - round_start:.0f} s)", file=sys.stderr, flush=True
        )
    return samples


# --------------------------------------------------------------------------
# Idle memory


def container_ids(home: BenchHome) -> dict[str, str]:
    """Full container id of each running container of the home, by qube name."""
    out = home.podman(
        "ps", "--no-trunc", "--filter", f"label=qlite.home={home.hash}", "--format", "{{.ID}} {{.Names}}"
    ).stdout
    prefix = f"qlite-{home.hash}-"
    ids = {}
    for line in out.splitlines():
        cid, _, name = line.partition(" ")
        if name.startswith(prefix):
            ids[name.removeprefix(prefix)] = cid
    return ids


def pid_from(pidfile: Path) -> int:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise BenchError(f"no pid in {pidfile}: {exc}") from None
    if not Path(f"/proc/{pid}").exists():
        raise BenchError(f"pid {pid} of {pidfile} does not run")
    return pid


def gvisor_usage(cid: str, table: list[tuple[int, str, str]], what: str) -> dict[str, float]:
    kinds = container_processes(cid, table)
    if not kinds["sandbox"]:
        raise BenchError(f"no runsc-sandbox process found for {what} (container {cid[:12]})")
    gvisor = kinds["sandbox"] | kinds["gofer"] | kinds["stubs"] | kinds["other"]
    return {
        "gvisor_pss_mib": pss_mib(gvisor),
        "gvisor_uss_mib": uss_mib(gvisor),
        "sentry_pss_mib": pss_mib(kinds["sandbox"] | kinds["stubs"]),
        "gofer_pss_mib": pss_mib(kinds["gofer"]),
        "gvisor_processes": len(gvisor),
        "conmon_pss_mib": pss_mib(kinds["conmon"]),
    }


def qemu_accel(qemu_pid: int) -> str:
    """The accel= the running QEMU was given on its -machine option."""
    argv = Path(f"/proc/{qemu_pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    for i, arg in enumerate(argv[:-1]):
        if arg == "-machine":
            for part in argv[i + 1].split(","):
                if part.startswith("accel="):
                    return part.removeprefix("accel=")
    raise BenchError(f"QEMU (pid {qemu_pid}) has no accel= on its -machine option")


def qemu_parts_mib(qemu_pid: int, guest_mib: int) -> dict[str, float]:
    """QEMU's PSS by mapping: the guest's RAM (the anonymous mapping of
    exactly its size), TCG's translated code (anonymous rwx mappings; none
    under KVM) and the rest (QEMU itself: binary, libraries, heap)."""
    parts = {"guest_ram": 0, "tcg_code": 0, "rest": 0}
    kind = "rest"
    try:
        with open(f"/proc/{qemu_pid}/smaps") as f:
            for line in f:
                words = line.split()
                if "-" in words[0] and not words[0].endswith(":"):  # a mapping's header
                    start, end = (int(x, 16) for x in words[0].split("-"))
                    anonymous = len(words) < 6
                    if anonymous and end - start == guest_mib * 2**20:
                        kind = "guest_ram"
                    elif anonymous and words[1] == "rwxp":
                        kind = "tcg_code"
                    else:
                        kind = "rest"
                elif words[0] == "Pss:":
                    parts[kind] += int(words[1])
    except OSError as exc:
        raise BenchError(f"cannot read the mappings of QEMU (pid {qemu_pid}): {exc}") from None
    return {f"qemu_{k}_pss_mib": v / 1024 for k, v in parts.items()}


def measure_memory(home: BenchHome, guest_mib: int) -> dict:
    # On a failure the qubes are left running: the teardown removes them.
    home.qlite("start", VM_QUBE, CT_QUBE, timeout=BOOT_TIMEOUT_S)
    time.sleep(SETTLE_S)
    run_dir = home.path / "run" / "vm" / VM_QUBE
    qemu, supervisor = pid_from(run_dir / "qemu.pid"), pid_from(run_dir / "supervisor.pid")
    ids = container_ids(home)
    if sorted(ids) != sorted((VM_QUBE, CT_QUBE)):
        raise BenchError(f"running containers are {sorted(ids)}; expected {VM_QUBE} (holder) and {CT_QUBE}")
    table = process_table()
    holder = gvisor_usage(ids[VM_QUBE], table, f"the network holder of {VM_QUBE}")
    vm = {
        "qemu_pss_mib": pss_mib({qemu}),
        "qemu_uss_mib": uss_mib({qemu}),
        **qemu_parts_mib(qemu, guest_mib),
        "supervisor_pss_mib": pss_mib({supervisor}),
        "supervisor_uss_mib": uss_mib({supervisor}),
        **{f"holder_{k}": v for k, v in holder.items()},
    }
    vm["total_pss_mib"] = vm["qemu_pss_mib"] + vm["supervisor_pss_mib"] + vm["holder_gvisor_pss_mib"]
    vm["total_uss_mib"] = vm["qemu_uss_mib"] + vm["supervisor_uss_mib"] + vm["holder_gvisor_uss_mib"]
    ct = gvisor_usage(ids[CT_QUBE], table, CT_QUBE)
    accel = qemu_accel(qemu)
    for qube in (VM_QUBE, CT_QUBE):
        shut_down(home, qube)
    return {"settle_s": SETTLE_S, "vm": vm, "container": ct, "accel": accel}


# --------------------------------------------------------------------------
# Results


def accel_facts() -> dict:
    """What qlite's KVM probe says: the answer VmRunner.accel goes by."""
    probe = cached_probe(KVM_CACHE)
    return {"kvm_present": probe.present, "kvm_usable": probe.usable, "kvm_probe_detail": probe.detail}


def build_result(
    args: argparse.Namespace,
    facts: dict,
    cases: list[Case],
    samples: dict[str, list[float]],
    warmup: dict[str, float],
    memory: dict,
) -> dict:
    def ratio(a: str, b: str, stat: Callable[[list[float]], float]) -> float:
        return stat(samples[a]) / stat(samples[b])

    vm, ct = memory["vm"], memory["container"]
    return {
        "accel": memory["accel"],
        "vm_start_p50_s": p50(samples["a_start"]),
        "vm_start_p95_s": p95(samples["a_start"]),
        "ct_start_p50_s": p50(samples["b_start"]),
        "ct_start_p95_s": p95(samples["b_start"]),
        "vm_boot_to_cmd_p50_s": p50(samples["a"]),
        "vm_boot_to_cmd_p95_s": p95(samples["a"]),
        "ct_boot_to_cmd_p50_s": p50(samples["b"]),
        "ct_boot_to_cmd_p95_s": p95(samples["b"]),
        "vm_disposable_p50_s": p50(samples["c"]),
        "vm_disposable_p95_s": p95(samples["c"]),
        "ct_disposable_p50_s": p50(samples["d"]),
        "ct_disposable_p95_s": p95(samples["d"]),
        "ratio_vm_to_ct_start_p50": ratio("a_start", "b_start", p50),
        "ratio_vm_to_ct_start_p95": ratio("a_start", "b_start", p95),
        "ratio_vm_to_ct_boot_to_cmd_p50": ratio("a", "b", p50),
        "ratio_vm_to_ct_boot_to_cmd_p95": ratio("a", "b", p95),
        "ratio_vm_to_ct_disposable_p50": ratio("c", "d", p50),
        "ratio_vm_to_ct_disposable_p95": ratio("c", "d", p95),
        "idle_vm_pss_mib": vm["total_pss_mib"],
        "idle_ct_pss_mib": ct["gvisor_pss_mib"],
        "ratio_vm_to_ct_idle_pss": vm["total_pss_mib"] / ct["gvisor_pss_mib"],
        "runs": args.runs,
        **facts,
        "cases": {
            c.key: {"label": c.label, "vm": c.vm, "qube": c.qube, "argv": [*QLITE, *c.argv] if c.qube is None else None}
            for c in cases
        },
        "samples_s": samples,
        "warmup_s": warmup,
        "idle_memory": memory,
    }


def render(result: dict) -> None:
    r = result
    print(
        f"\nqlite VM bench: VM qubes under {r['accel'].upper()}; {r['runs']} interleaved runs per case "
        f"after one untimed warm-up each"
    )
    print(f"KVM probe: {r['kvm_probe_detail']}")
    print(
        f"host: kernel {r['kernel']}, {r['cpu_count']} CPUs, {r['mem_total_mib']} MiB, runsc {r['runsc_version']} "
        f"({r['platform']}), podman {r['podman_version']}, {r['qemu_version']}; "
        f"1-min load {r['loadavg_1min_before']:.1f} before, {r['loadavg_1min_after']:.1f} after"
    )
    print(
        f"qubes: template {r['template']}, memory {r['qube_memory_mib']} MiB, {r['qube_vcpus']} vcpus, "
        f"--netvm none; VM kernel {r['vm_kernel']}\n"
    )
    print(f"{'case':<64} {'p50 s':>7} {'p95 s':>7} {'VM/ct p50':>10} {'p95':>7}")
    rows = [
        ("a_start", f"a  qlite start {VM_QUBE} (VM)", "ratio_vm_to_ct_start"),
        ("b_start", f"b  qlite start {CT_QUBE} (container)", None),
        ("a", f"a  {r['cases']['a']['label']}", "ratio_vm_to_ct_boot_to_cmd"),
        ("b", f"b  {r['cases']['b']['label']}", None),
        ("c", f"c  {r['cases']['c']['label']}", "ratio_vm_to_ct_disposable"),
        ("d", f"d  {r['cases']['d']['label']}", None),
    ]
    for key, label, ratio in rows:
        xs = r["samples_s"][key]
        tail = f" {r[ratio + '_p50']:>9.2f}x {r[ratio + '_p95']:>6.2f}x" if ratio else ""
        print(f"{label:<64} {p50(xs):>7.3f} {p95(xs):>7.3f}{tail}")
    w = r["warmup_s"]
    print(
        f"\n   warm-ups (untimed above; 'uname -r' checked): a {w['a']:.1f} s (incl. kernel unpack and root "
        f"disk export), b {w['b']:.1f} s, c {w['c']:.1f} s, d {w['d']:.1f} s"
    )
    m = r["idle_memory"]
    vm, ct = m["vm"], m["container"]
    print(f"\nmemory: {VM_QUBE} and {CT_QUBE} idle and running together, PSS after {m['settle_s']:.0f} s")
    print(
        f"  {'VM ' + VM_QUBE + ': QEMU + supervisor + holder gVisor':<46} {vm['total_pss_mib']:7.1f} MiB"
        f"   (QEMU {vm['qemu_pss_mib']:.1f}: guest RAM {vm['qemu_guest_ram_pss_mib']:.1f}, "
        f"TCG code {vm['qemu_tcg_code_pss_mib']:.1f}, rest {vm['qemu_rest_pss_mib']:.1f};"
    )
    print(
        f"  {'':<62}supervisor {vm['supervisor_pss_mib']:.1f}, holder {vm['holder_gvisor_pss_mib']:.1f}; "
        f"USS {vm['total_uss_mib']:.1f})"
    )
    print(
        f"  {'container ' + CT_QUBE + ': gVisor':<46} {ct['gvisor_pss_mib']:7.1f} MiB"
        f"   (sentry+stubs {ct['sentry_pss_mib']:.1f}, gofer {ct['gofer_pss_mib']:.1f}; "
        f"USS {ct['gvisor_uss_mib']:.1f})"
    )
    print(f"  {'VM / container':<46} {r['ratio_vm_to_ct_idle_pss']:7.2f}x")
    print(
        f"  conmon, apart: {vm['holder_conmon_pss_mib']:.1f} MiB (VM's holder), "
        f"{ct['conmon_pss_mib']:.1f} MiB ({CT_QUBE})"
    )


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse_runs_args(__doc__, argv, 5, "timed runs per case (default 5: a TCG boot takes ~5 s)", DEFAULT_JSON)


def run_bench(home: BenchHome, args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    prepare(home)
    cases = latency_cases()
    warmup, vm_kernel = warm_up(home, cases)
    samples = measure_latency(home, cases, args.runs)
    row = next(r for r in home.qlite_json("ls") if r["name"] == VM_QUBE)
    memory = measure_memory(home, row["memory"])
    facts = accel_facts()
    expected = "kvm" if facts["kvm_usable"] else "tcg"
    if memory["accel"] != expected and not home.env.get("QLITE_VM_ACCEL"):
        print(f"warning: QEMU ran with accel={memory['accel']}, but the KVM probe says {expected}", file=sys.stderr)
    facts |= {
        "qemu_version": qemu_version(),
        "vm_kernel": vm_kernel,
        "template": row["template"],
        "qube_memory_mib": row["memory"],
        "qube_vcpus": row["vcpus"],
        "qlite_vm_accel_env": home.env.get("QLITE_VM_ACCEL", ""),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
    }
    return build_result(args, host_facts(home, home.probe(), **facts), cases, samples, warmup, memory)


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench/vm.py", parse_args(argv), run_bench, render, DEFAULT_JSON)


if __name__ == "__main__":
    sys.exit(main())
