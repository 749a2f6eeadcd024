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
  f. ``qlite run --dvm bench-dvm-pre -- true``: like b, from a second
     offline disposable template with ``preload-dispvm-max 2``: the daemon
     keeps two started, and the command is handed to one through its
     agent. Before each timed run the bench waits (untimed) until a member
     is ready; the refill after a run overlaps the other cases' runs.
     Preloading is switched off, and the bench waits for its members to
     be gone, before memory is measured.

Why these baselines:

- A qlite disposable is, underneath, a podman container that runs under
  qlite's runsc wrapper.
- Case c is exactly that container with nothing of qlite around it: the same
  image, store, wrapper and runsc flags, and no network. So b/c is what qlite
  itself costs (CLI start-up, store rows, private volume, attach and cleanup).
- Case d is the floor: a gVisor sandbox with no container engine. It must use
  ``--network=none``, because gVisor's netstack fails on this kernel (see
  ``qlite doctor`` and docs/isolation.md).
- Case e is case c plus a podman bridge, which a networked disposable also
  pays. So a/e is the like-for-like ratio for case a, and the table still
  reports every ratio against case c.
- The runs are interleaved (a, b, c, d, e, a, ...) after one untimed warm-up
  of each, so that drift of the machine hits every case alike.

Memory: N app qubes (``--netvm none``) are created (a few at a time),
started by one ``qlite start`` and left to settle. Two things are then
measured:

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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The script runs as `python bench/disposable.py`, which puts bench/ on
# sys.path; this keeps `python -P` (safe path) working too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    CMD_TIMEOUT_S,
    DEFAULT_DVM,
    QLITE,
    REPO,
    TEMPLATE,
    BenchError,
    BenchHome,
    bench_main,
    create_bulk,
    create_qube,
    host_facts,
    last_line,
    p50,
    p95,
    setup_home,
    warn_if_few_runs,
)

from qlite.core.usage import (
    MIB_PER_KIB,
    container_processes,
    process_table,
    pss_mib,
    uss_mib,
)

DEFAULT_JSON = REPO / "bench" / "results" / "disposable.json"
OFFLINE_DVM = "bench-dvm-off"
PRELOAD_DVM = "bench-dvm-pre"
IDLE_PREFIX = "bench-idle-"
EXPECTED_RUNTIME = "qlite-runsc"
SETTLE_S = 3.0
BASELINE = "c"

PUBLISHED = {
    "source": "qubes-core-admin tests-data/dispvm_perf (Qubes R4.3, laptop)",
    "qubes_disposable_cold_s": 6.5,
    "qubes_disposable_preloaded_s": 2.3,
    "qubes_appvm_default_memory_mb": 400,
}


# --------------------------------------------------------------------------
# Setting up


@dataclass(frozen=True)
class Setup:
    image_id: str
    probe: dict
    netpath: str


def prepare(home: BenchHome) -> Setup:
    """Set the home up, create the offline disposable templates and the
    bench network, start the daemon, and check that the baseline uses
    qlite's runtime."""
    setup_home(home)
    create_qube(home, OFFLINE_DVM, "--netvm", "none", "--prop", "template_for_dispvms=True", "--label", "gray")
    # A second offline disposable template whose disposables the daemon
    # preloads (case f); b stays cold, so b and f differ only in that.
    create_qube(home, PRELOAD_DVM, "--netvm", "none", "--prop", "template_for_dispvms=True", "--label", "gray")
    home.before_removal.append(lambda: home.qlite("features", "-D", PRELOAD_DVM, "preload-dispvm-max", check=False))
    home.before_removal.append(lambda: home.qlite("daemon", "stop", check=False))
    home.before_removal.append(lambda: home.qlite("reconcile", check=False))
    home.qlite("features", PRELOAD_DVM, "preload-dispvm-max", "2")
    home.qlite("daemon", "start")
    home.network = f"qlite-{home.hash}-bench-net"
    home.podman("network", "create", *home.label_args(), home.network)
    image_id = template_image_id(home)
    check_runtime(home, image_id)
    probe = home.probe()
    rows = home.qlite_json("ls")
    netpath = next(r["netpath"] for r in rows if r["name"] == DEFAULT_DVM)
    return Setup(image_id=image_id, probe=probe, netpath=netpath)


def template_image_id(home: BenchHome) -> str:
    for row in home.qlite_json("template", "list"):
        if row["name"] == TEMPLATE:
            return row["image_id"]
    raise BenchError(f"qlite setup left no {TEMPLATE} template")


def check_runtime(home: BenchHome, image_id: str) -> None:
    cid = home.podman("create", *home.label_args(), "--network=none", "--pull=never", image_id, "true").stdout.strip()
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
    before: Callable[[], None] | None = None  # untimed, before every run


def wait_preloaded(home: BenchHome, timeout: float = CMD_TIMEOUT_S) -> None:
    """Until the daemon has a ready member of PRELOAD_DVM (the refill after
    the previous run happens while the other cases run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = home.qlite_json("ls")
        if any("preloaded" in r["tags"] and r["state"] == "Running" and r["template"] == PRELOAD_DVM for r in rows):
            return
        time.sleep(0.05)
    raise BenchError(f"no preloaded disposable of {PRELOAD_DVM} became ready in {timeout:.0f} s")


def stop_preloading(home: BenchHome, timeout: float = CMD_TIMEOUT_S) -> None:
    """Switch preloading off and wait until the daemon has removed every
    disposable of PRELOAD_DVM, so that none starts or ends while memory
    (or anything after the latency runs) is measured."""
    home.qlite("features", "-D", PRELOAD_DVM, "preload-dispvm-max")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(r["class"] == "DispVM" and r["template"] == PRELOAD_DVM for r in home.qlite_json("ls")):
            return
        time.sleep(0.5)
    raise BenchError(f"the preloaded disposables of {PRELOAD_DVM} were still there after {timeout:.0f} s")


def latency_cases(home: BenchHome, setup: Setup) -> list[Case]:
    podman_run = ("podman", "run", "--rm", "--pull=never", *home.label_args())
    # runsc do mounts the host's / read-only under a tmpfs overlay and runs
    # the command in the current directory, so it runs from the bench home.
    # As root it needs no --rootless flag. Its state goes into the bench
    # home, so a run that is cut short leaves nothing in /var/run/runsc.
    runsc_do = (
        setup.probe["runsc"],
        f"--root={home.path / 'runsc-state'}",
        "--network=none",
        f"--platform={setup.probe['platform']}",
        "do",
        "true",
    )
    return [
        Case(
            "a",
            "qlite run --disposable (default-dvm, network)",
            (*QLITE, "run", "--disposable", "--", "true"),
            home.env,
        ),
        Case(
            "b",
            f"qlite run --dvm {OFFLINE_DVM} (offline)",
            (*QLITE, "run", "--dvm", OFFLINE_DVM, "--", "true"),
            home.env,
        ),
        Case(
            "c",
            "podman run --rm --network=none, qlite-runsc",
            (*podman_run, "--network=none", setup.image_id, "true"),
            home.podman_env,
        ),
        Case("d", "runsc --network=none do true", runsc_do, home.env),
        Case(
            "e",
            "podman run --rm, bridge network, qlite-runsc",
            (*podman_run, f"--network={home.network}", setup.image_id, "true"),
            home.podman_env,
        ),
        Case(
            "f",
            f"qlite run --dvm {PRELOAD_DVM} (offline, preloaded)",
            (*QLITE, "run", "--dvm", PRELOAD_DVM, "--", "true"),
            home.env,
            lambda: wait_preloaded(home),
        ),
    ]


def time_once(case: Case, cwd: Path) -> float:
    if case.before is not None:
        case.before()
    start = time.perf_counter()
    proc = subprocess.run(
        case.argv,
        env=case.env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(
            f"case {case.key} ({case.label}) exited {proc.returncode}: {last_line(proc.stderr or proc.stdout)}"
        )
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


# --------------------------------------------------------------------------
# Idle memory


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise BenchError("no MemAvailable in /proc/meminfo")


def idle_names(density: int) -> list[str]:
    return [f"{IDLE_PREFIX}{i:02d}" for i in range(1, density + 1)]


def start_idle_qubes(home: BenchHome, density: int) -> tuple[list[str], float]:
    names = idle_names(density)
    create_bulk(home, names, "--netvm", "none", "--label", "gray", what="idle qubes")
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
    out = home.podman(
        "ps", "--no-trunc", "--filter", f"label=qlite.home={home.hash}", "--format", "{{.ID}} {{.Names}}"
    ).stdout
    prefix = f"qlite-{home.hash}-{IDLE_PREFIX}"
    ids = {}
    for line in out.splitlines():
        cid, _, name = line.partition(" ")
        if name.startswith(prefix):
            ids[name.removeprefix(f"qlite-{home.hash}-")] = cid
    return ids


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


def mean_of(per_qube: dict[str, dict], key: str) -> float:
    return statistics.fmean(q[key] for q in per_qube.values())


def build_result(
    args: argparse.Namespace, facts: dict, cases: list[Case], samples: dict[str, list[float]], memory: dict
) -> dict:
    base = p50(samples[BASELINE])
    per_qube = memory["per_qube"]
    return {
        "qlite_p50_s": p50(samples["a"]),
        "qlite_p95_s": p95(samples["a"]),
        "qlite_offline_p50_s": p50(samples["b"]),
        "qlite_offline_p95_s": p95(samples["b"]),
        "podman_runsc_p50_s": base,
        "podman_runsc_p95_s": p95(samples["c"]),
        "runsc_do_p50_s": p50(samples["d"]),
        "runsc_do_p95_s": p95(samples["d"]),
        "podman_runsc_net_p50_s": p50(samples["e"]),
        "podman_runsc_net_p95_s": p95(samples["e"]),
        "ratio_qlite_to_podman_p50": p50(samples["a"]) / base,
        "ratio_qlite_offline_to_podman_p50": p50(samples["b"]) / base,
        "ratio_qlite_to_podman_net_p50": p50(samples["a"]) / p50(samples["e"]),
        "preloaded_p50_s": p50(samples["f"]),
        "preloaded_p95_s": p95(samples["f"]),
        "ratio_preloaded_to_runsc_do_p50": p50(samples["f"]) / p50(samples["d"]),
        "ratio_preloaded_to_podman_p50": p50(samples["f"]) / base,
        "idle_qube_pss_mib": mean_of(per_qube, "gvisor_pss_mib"),
        "idle_qube_uss_mib": mean_of(per_qube, "gvisor_uss_mib"),
        "idle_qube_sentry_pss_mib": mean_of(per_qube, "sandbox_pss_mib") + mean_of(per_qube, "stubs_pss_mib"),
        "idle_qube_gofer_pss_mib": mean_of(per_qube, "gofer_pss_mib"),
        "idle_qube_memavailable_drop_mib": memory["memavailable_drop_mib"],
        "conmon_pss_mib": mean_of(per_qube, "conmon_pss_mib"),
        "idle_start_all_s": memory["start_all_s"],
        "runs": args.runs,
        "density": args.density,
        **facts,
        "cases": {c.key: {"label": c.label, "argv": list(c.argv)} for c in cases},
        "samples_s": samples,
        "idle_per_qube": per_qube,
        "published_not_measured_here": PUBLISHED,
    }


def render(result: dict) -> None:
    r = result
    print(f"\nqlite disposable bench: {r['runs']} interleaved runs per case after one warm-up each")
    print(
        f"host: kernel {r['kernel']}, {r['cpu_count']} CPUs, {r['mem_total_mib']} MiB, runsc {r['runsc_version']} "
        f"({r['platform']}), podman {r['podman_version']}, netpath {r['netpath']}\n"
    )
    print(f"{'case':<52} {'p50 s':>7} {'p95 s':>7} {'/ c p50':>8}")
    base = r["podman_runsc_p50_s"]
    for key, case in r["cases"].items():
        xs = r["samples_s"][key]
        print(f"{key}  {case['label']:<49} {p50(xs):>7.3f} {p95(xs):>7.3f} {p50(xs) / base:>7.2f}x")
    print(f"\n   a / e (networked qlite vs networked podman): {r['ratio_qlite_to_podman_net_p50']:.2f}x")
    print(
        f"   f / d (preloaded vs runsc do): {r['ratio_preloaded_to_runsc_do_p50']:.2f}x;"
        f" f / c (preloaded vs podman run): {r['ratio_preloaded_to_podman_p50']:.2f}x"
    )
    print(
        f"\nmemory: {r['density']} idle app qubes (--netvm none), started by one 'qlite start' "
        f"in {r['idle_start_all_s']:.1f} s"
    )
    print(f"  MemAvailable drop per qube             {r['idle_qube_memavailable_drop_mib']:7.1f} MiB")
    print(
        f"  gVisor PSS per qube (mean)             {r['idle_qube_pss_mib']:7.1f} MiB"
        f"   (sentry+stubs {r['idle_qube_sentry_pss_mib']:.1f}, gofer {r['idle_qube_gofer_pss_mib']:.1f};"
        f" USS {r['idle_qube_uss_mib']:.1f})"
    )
    print(f"  conmon PSS per qube                    {r['conmon_pss_mib']:7.1f} MiB")
    p = r["published_not_measured_here"]
    print(f"\nQubes OS, PUBLISHED figures, NOT measured here ({p['source']}):")
    print(
        f"  disposable: {p['qubes_disposable_cold_s']} s cold, {p['qubes_disposable_preloaded_s']} s preloaded;"
        f" an AppVM's default memory: {p['qubes_appvm_default_memory_mb']} MB"
    )


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency case (default 20)")
    parser.add_argument("--density", type=int, default=20, help="idle app qubes to start (default 20)")
    parser.add_argument("--json", type=Path, default=None, help=f"write results here (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    if args.runs < 2 or args.density < 1:
        parser.error("--runs must be at least 2 and --density at least 1")
    warn_if_few_runs(args.runs)
    return args


def run_bench(home: BenchHome, args: argparse.Namespace) -> dict:
    setup = prepare(home)
    cases = latency_cases(home, setup)
    samples = measure_latency(cases, args.runs, home.path)
    stop_preloading(home)
    memory = measure_memory(home, args.density)
    return build_result(args, host_facts(home, setup.probe, netpath=setup.netpath), cases, samples, memory)


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench/disposable.py", parse_args(argv), run_bench, render, DEFAULT_JSON)


if __name__ == "__main__":
    sys.exit(main())
