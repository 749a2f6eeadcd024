"""What the benchmarks in bench/ share: a QLITE_HOME of their own under
/var/tmp, commands run in it, qubes made in it (one by one or in parallel
batches), commands timed inside a qube, percentiles, host facts, and a
teardown that removes everything the bench made and checks by label that
nothing is left.

The scripts run as ``python bench/<name>.py``, so this directory is on
sys.path and they import this module as ``benchlib``.
"""

from __future__ import annotations

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from qlite.state.owners import current_owner

REPO = Path(__file__).resolve().parent.parent
# The command users type: the console script, a thin client that the
# home's daemon serves while it runs (python -m qlite always runs in-process).
_SCRIPT = Path(sys.executable).with_name("qlite")
QLITE = (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "qlite")
HOME_BASE = Path("/var/tmp")
TEMPLATE = "debian-12"
DEFAULT_DVM = "default-dvm"
CMD_TIMEOUT_S = 120
# `qlite create` / `qlite remove` processes at once when qubes are made or
# removed in bulk: enough to overlap the CLI's start-up on a small host
# without starving it.
BULK_WORKERS = 4
# Qubes per `qlite remove` process when removing in bulk.
REMOVE_BATCH = 25
# conmon of an exec session can outlive its container's removal by some
# seconds; after this long, a process of the home counts as left behind.
PROCESS_GRACE_S = 30
# The bench's own engine objects carry this owner tag. qlite's reconcile
# then sees them as belonging to a live process and leaves them alone, and
# the bench removes them itself on exit.
OWNER = current_owner()


class BenchError(Exception):
    """A step of the bench failed; the numbers would be meaningless."""


# --------------------------------------------------------------------------
# Running commands


def run(
    argv: list[str], env: dict[str, str], cwd: Path, *, check: bool = True, timeout: float = CMD_TIMEOUT_S
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
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
    # Removed one by one, last first, so a qube goes before those it uses.
    qubes: list[str] = field(default_factory=list)
    # Qubes nothing depends on (no netvm of, or disposable template for,
    # another qube): removed first, in parallel batches.
    bulk_qubes: list[str] = field(default_factory=list)
    bulk_workers: int = BULK_WORKERS
    network: str | None = None
    # Steps the teardown runs before it removes any qube (e.g. stopping a
    # daemon that a bench started inside one), in order.
    before_removal: list[Callable[[], object]] = field(default_factory=list)

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

    def probe(self) -> dict:
        """What qlite's setup found out about runsc on this host."""
        return json.loads((self.path / "run" / "probe.json").read_text())


# --------------------------------------------------------------------------
# Making qubes


def setup_home(home: BenchHome) -> None:
    """``qlite setup`` in the bench home: it adopts the shared template and
    creates default-dvm."""
    home.qubes.append(DEFAULT_DVM)  # setup creates it; the bench removes it
    home.qlite("setup", "--quiet", timeout=1800)


def create_qube(home: BenchHome, name: str, *create_args: str) -> None:
    home.qubes.append(name)  # first, so that a create cut short is cleaned up too
    home.qlite("create", name, *create_args)


def create_bulk(home: BenchHome, names: list[str], *create_args: str, what: str = "qubes") -> None:
    """Create NAMES (leaf qubes) with at most home.bulk_workers ``qlite
    create`` at once, printing progress; the teardown removes them in bulk."""
    home.bulk_qubes.extend(names)  # first, so that a create cut short is cleaned up too
    step = max(1, len(names) // 10)

    def progress(done: int) -> None:
        if done % step == 0 or done == len(names):
            print(f"  created {done}/{len(names)} {what}", file=sys.stderr, flush=True)

    print(f"  creating {len(names)} {what}, {home.bulk_workers} at a time", file=sys.stderr, flush=True)
    in_parallel(home, [("create", name, *create_args) for name in names], progress=progress)


def remove_bulk(home: BenchHome, names: list[str], *, check: bool = True) -> None:
    """Remove NAMES (leaf qubes, running or not) in parallel batches."""
    batches = [names[i : i + REMOVE_BATCH] for i in range(0, len(names), REMOVE_BATCH)]
    in_parallel(
        home,
        [("remove", "--force", *batch) for batch in batches],
        check=check,
        timeout=CMD_TIMEOUT_S + 10 * REMOVE_BATCH,
    )
    if check:
        gone = set(names)
        home.bulk_qubes = [n for n in home.bulk_qubes if n not in gone]


def in_parallel(
    home: BenchHome,
    commands: list[tuple[str, ...]],
    *,
    check: bool = True,
    timeout: float = CMD_TIMEOUT_S,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Run qlite COMMANDS, at most home.bulk_workers at once. A failure (with
    CHECK) or an interrupt cancels the commands not yet started."""
    pool = ThreadPoolExecutor(home.bulk_workers)
    try:
        futures = [pool.submit(home.qlite, *cmd, check=check, timeout=timeout) for cmd in commands]
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            if progress is not None:
                progress(done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------
# Timing commands inside a qube


@dataclass(frozen=True)
class QubeCase:
    """A command timed inside QUBE, by a loop that runs there."""

    key: str
    label: str
    qube: str
    argv: tuple[str, ...]


# Run inside a qube: run spec["argv"] spec["n"] times with spec["input"] on
# its stdin, timing each run alone, and print the times and outputs as JSON.
# A run that exits non-zero or whose stdout is not what was expected (equal
# to, or with "exact" false starting with, spec["expect"]) ends the loop.
IN_QUBE_TIMER = """\
import json, subprocess, sys, time
spec = json.loads(sys.argv[1])
data, want = spec["input"].encode(), spec["expect"].encode()
out = {"samples_s": [], "outputs": []}
for _ in range(spec["n"]):
    start = time.perf_counter()
    proc = subprocess.run(spec["argv"], input=data, capture_output=True)
    out["samples_s"].append(time.perf_counter() - start)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        out["error"] = f"exit {proc.returncode}: {err[-1] if err else 'no output'}"
        break
    if not (proc.stdout == want if spec["exact"] else proc.stdout.startswith(want)):
        out["error"] = f"unexpected output {proc.stdout[:80]!r}"
        break
    out["outputs"].append(proc.stdout.decode())
print(json.dumps(out))
"""


def time_in_qube(
    home: BenchHome, case: QubeCase, n: int, stdin: str, expect: str, exact: bool = False
) -> tuple[list[float], list[str]]:
    """N runs of CASE, each timed inside its qube (so ``qlite run``'s own
    start-up is not counted) and checked: exit 0 and the EXPECTed output."""
    spec = {"argv": list(case.argv), "n": n, "input": stdin, "expect": expect, "exact": exact}
    proc = home.qlite(
        "run", case.qube, "--", "python3", "-c", IN_QUBE_TIMER, json.dumps(spec), timeout=CMD_TIMEOUT_S + 10 * n
    )
    out = json.loads(last_line(proc.stdout))
    if "error" in out:
        raise BenchError(f"case {case.key} ({case.label}) failed: {out['error']}")
    return out["samples_s"], out["outputs"]


def batch_sizes(runs: int, batches: int) -> list[int]:
    count = min(runs, batches)
    q, r = divmod(runs, count)
    return [q + (i < r) for i in range(count)]


def measure_in_qubes(
    home: BenchHome,
    cases: list[QubeCase],
    runs: int,
    *,
    stdin: str,
    expect: str,
    exact: bool = False,
    warmup: int,
    batches: int,
) -> tuple[dict, dict, list[dict]]:
    """RUNS timed runs per case inside their qubes, after WARMUP untimed ones,
    in interleaved batches (a, b, a, b, ...) so that drift of the machine
    hits every case alike. Returns samples and outputs by case key, and the
    samples of each batch."""
    for case in cases:
        time_in_qube(home, case, warmup, stdin, expect, exact)  # page cache, python's bytecode
    samples: dict[str, list[float]] = {c.key: [] for c in cases}
    outputs: dict[str, list[str]] = {c.key: [] for c in cases}
    log = []
    sizes = batch_sizes(runs, batches)
    for i, n in enumerate(sizes):
        for case in cases:
            xs, outs = time_in_qube(home, case, n, stdin, expect, exact)
            samples[case.key] += xs
            outputs[case.key] += outs
            log.append({"batch": i + 1, "case": case.key, "samples_s": xs})
        print(f"  batch {i + 1}/{len(sizes)} done", file=sys.stderr, flush=True)
    return samples, outputs, log


# --------------------------------------------------------------------------
# Numbers


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    """Linear interpolation between order statistics (the 'inclusive' method)."""
    return statistics.quantiles(xs, n=100, method="inclusive")[94]


def host_facts(home: BenchHome, probe: dict, **extra: object) -> dict:
    """Kernel, runsc, podman and machine size; EXTRA goes after the platform."""
    podman_version = home.podman("version", "--format", "{{.Client.Version}}").stdout.strip()
    return {
        "kernel": platform.release(),
        "runsc_version": probe["version"],
        "platform": probe["platform"],
        **extra,
        "podman_version": podman_version,
        "cpu_count": os.cpu_count(),
        "mem_total_mib": round(psutil.virtual_memory().total / 2**20),
    }


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
            for step in home.before_removal:
                attempt(step)
            # default-dvm cannot be removed while it is the global default_dispvm.
            attempt(lambda: home.qlite("prefs", "--global", "default_dispvm", "none", check=False))
            if home.bulk_qubes:
                print(f"cleanup: removing {len(home.bulk_qubes)} qubes in batches", file=sys.stderr, flush=True)
                started = time.monotonic()
                attempt(lambda: remove_bulk(home, list(reversed(home.bulk_qubes)), check=False))
                print(f"cleanup: removed in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            for name in reversed(home.qubes):
                attempt(lambda name=name: home.qlite("remove", "--force", name, check=False))
            if home.network:
                attempt(lambda: home.podman("network", "rm", "-f", home.network, check=False))
            # Release this home's hold on the shared template image (its tag).
            attempt(lambda: home.qlite("prefs", "--global", "-D", "default_template", check=False))
            attempt(lambda: home.qlite("template", "remove", TEMPLATE, check=False))
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
    running = wait_processes_gone(home, PROCESS_GRACE_S)
    if running:
        print(
            f"WARNING: processes of bench home {home.path} still run after {PROCESS_GRACE_S} s: {running}",
            file=sys.stderr,
        )


def home_processes(home: BenchHome) -> list[int]:
    """Pids of processes that name the home on their command line (conmon,
    the podman service) or in their environment (qlite daemon)."""
    marker, env_marker = str(home.path), f"QLITE_HOME={home.path}"
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or ()) or env_marker in (
                f"{k}={v}" for k, v in proc.environ().items()
            ):
                pids.append(proc.info["pid"])
        except psutil.Error:
            continue  # gone, or a zombie
    return pids


def wait_processes_gone(home: BenchHome, timeout: float) -> list[int]:
    """Wait up to TIMEOUT for the home's processes to end; return those left."""
    deadline = time.monotonic() + timeout
    while (pids := home_processes(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return pids


# --------------------------------------------------------------------------
# Running a bench


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bench_main(
    script: str,
    args,
    run_bench: Callable[[BenchHome, object], dict],
    render: Callable[[dict], None],
    default_json: Path,
) -> int:
    """The whole of a benchmark's main(): measure in a fresh home, print the
    table, write the JSON (to --json, else DEFAULT_JSON), clean up."""

    def body(home: BenchHome) -> None:
        result = run_bench(home, args)
        render(result)
        write_json(result, args.json or default_json)

    return run_in_home(script, body)


def warn_if_few_runs(runs: int) -> None:
    if runs < 20:
        print("warning: a p95 over fewer than 20 runs is not meaningful", file=sys.stderr)


def parse_runs_args(doc: str, argv: list[str] | None, runs: int, runs_help: str, default_json: Path):
    """The command line of a bench that takes only --runs and --json."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=runs, help=runs_help)
    parser.add_argument("--json", type=Path, default=None, help=f"write results here (default {default_json})")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    warn_if_few_runs(args.runs)
    return args


def run_in_home(script: str, body: Callable[[BenchHome], None]) -> int:
    """Run BODY in a fresh bench home as root and tear the home down on any
    exit: success, Ctrl-C, SIGTERM or a failed step. Returns the exit code."""
    if os.geteuid() != 0:
        print(f"{script} must run as root (qlite's podman service is rootful)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    home = BenchHome(Path(tempfile.mkdtemp(prefix="qlite-bench-", dir=HOME_BASE)).resolve())
    print(f"bench home {home.path} (label qlite.home={home.hash})", file=sys.stderr)
    try:
        body(home)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        teardown(home)
