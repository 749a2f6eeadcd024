"""Every qlite benchmark in one run, against baselines of the same run.

In one bench home: disposable latency, idle density, RPC call latency, a
command in a running qube, split GPG signing and ``qlite ls`` with many
qubes, each against a baseline measured in the same run on the same machine.

Run as root:  .venv/bin/python bench/suite.py [--runs N] [--density N]
              [--rpc-runs N] [--run-runs N] [--gpg-runs N] [--ls-qubes N]
              [--ls-runs N]
              [--workers N] [--json OUT]

It writes a table to stdout, the results to bench/results/suite.json (or
--json OUT) and a plot next to the JSON (same stem, .png).

1. Disposable latency (bench/disposable.py's cases, p50 and p95 over --runs
   interleaved runs of each after one warm-up): ``qlite run --disposable``
   (default-dvm, with a network), a cold offline disposable and a preloaded
   one, against ``podman run --rm --network=none`` with qlite's runsc
   wrapper, the same on a podman bridge, and ``runsc --network=none do
   true``. The podman runs are a qlite disposable's container with nothing
   of qlite around it, so their ratio is what qlite itself costs; ``runsc
   do`` is gVisor alone, the floor. Preloading is then switched off.
2. Idle density (bench/disposable.py's measure_memory): --density app qubes
   (``--netvm none``) are started and left to settle; the drop in
   MemAvailable per qube, and the PSS of each qube's gVisor processes.
   They are removed afterwards.
3. RPC call latency: qube bench-rpc-a calls the service qlite.BenchEcho
   (``exec cat``) in the running qube bench-rpc-b with
   ``qrexec-client-vm bench-rpc-b qlite.BenchEcho``, under an explicit
   allow rule for exactly those two qubes ($QLITE_HOME/policy.d, no ask).
   The baseline runs the service's own executable locally in bench-rpc-b,
   so the ratio is what a call through the broker adds to the command
   itself. Both are timed INSIDE their qube (a python3 loop with
   time.perf_counter around subprocess.run), so ``qlite run``'s start-up is
   in neither. Every timed call must exit 0 and echo its input exactly, and
   the broker's log must show them as allowed by the bench's rule and done
   with exit 0, so a broken path cannot pass as a fast one.
4. A command in a running qube, timed from the host (p50 and p95 over
   --run-runs interleaved rounds after one warm-up): ``qlite run
   bench-rpc-b -- true``, against ``podman exec`` (qlite's containers.conf,
   so qlite-runsc) and ``runsc exec`` with the sandbox's own --root, both
   into the very same container. runsc exec is gVisor alone, the floor.
5. Split GPG signing (bench/splitgpg.py): ``qlite-gpg -bsa`` in the client
   through the vault, against gpg in the vault, both timed inside the
   qube; every signature is verified afterwards.
6. ``qlite ls`` and ``qlite ls --json`` (p50 and p95 over --ls-runs runs
   each) with the bench's own few qubes, then again after --ls-qubes more
   halted app qubes are defined (``qlite create NAME --label gray --netvm
   none``, --workers at a time). The first is the baseline: the ratio is
   what the listing's size costs.

Qubes OS's figures (disposable 6.5 s cold and 2.3 s preloaded, from
qubes-core-admin tests-data/dispvm_perf; an RPC call 46 ms; an AppVM's
default memory 400 MB) are printed and stored as PUBLISHED, never as
measured: they come from other hardware and another architecture.

Between stages the machine is not idle: the qubes of earlier stages keep
running (the RPC and split GPG qubes idle). The bench works in its own
QLITE_HOME under /var/tmp. On exit, including Ctrl-C and errors, it removes
everything it made (the many qubes in parallel batches) and checks by
label that nothing is left.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# The script runs as `python bench/suite.py`, which puts bench/ on sys.path;
# this keeps `python -P` (safe path) working too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import disposable
import splitgpg
from benchlib import (
    BULK_WORKERS,
    QLITE,
    REPO,
    BenchError,
    BenchHome,
    QubeCase,
    bench_main,
    create_bulk,
    create_qube,
    host_facts,
    measure_in_qubes,
    p50,
    p95,
    remove_bulk,
    run,
    warn_if_few_runs,
)

DEFAULT_JSON = REPO / "bench" / "results" / "suite.json"

RPC_CALLER = "bench-rpc-a"
RPC_TARGET = "bench-rpc-b"
RPC_SERVICE = "qlite.BenchEcho"
RPC_SERVICE_PATH = f"/run/qubes-rpc/{RPC_SERVICE}"
RPC_SERVICE_SCRIPT = "#!/bin/sh\nexec cat\n"
RPC_POLICY = "30-bench-suite.policy"
RPC_MESSAGE = "qlite suite RPC bench: these bytes go to the service and must come back unchanged.\n"
RPC_WARMUP = 3
RPC_BATCHES = 6

LS_PREFIX = "bench-ls-"

PUBLISHED = {
    **{k: v for k, v in disposable.PUBLISHED.items() if k != "source"},
    "qubes_rpc_call_ms": 46,
    "sources": {
        "disposables and memory": disposable.PUBLISHED["source"],
        "rpc": "Qubes OS's published figure for one qrexec call",
    },
}


# --------------------------------------------------------------------------
# RPC


def rpc_cases() -> list[QubeCase]:
    return [
        QubeCase(
            "rpc",
            f"qrexec-client-vm {RPC_TARGET} {RPC_SERVICE} in {RPC_CALLER}",
            RPC_CALLER,
            ("qrexec-client-vm", RPC_TARGET, RPC_SERVICE),
        ),
        QubeCase(
            "rpc_local", f"{RPC_SERVICE_PATH} run locally in {RPC_TARGET} (baseline)", RPC_TARGET, (RPC_SERVICE_PATH,)
        ),
    ]


def prepare_rpc(home: BenchHome) -> str:
    """Two running offline qubes, the echo service in the target and an
    allow rule for exactly this call; return the rule's file:line."""
    # A batch cut short (Ctrl-C) leaves its loop running in the caller after
    # `qlite run` is gone: stop the caller before anything else.
    home.before_removal.append(lambda: home.qlite("kill", RPC_CALLER, check=False))
    create_qube(home, RPC_CALLER, "--netvm", "none", "--label", "blue")
    create_qube(home, RPC_TARGET, "--netvm", "none", "--label", "green")
    policy_dir = home.path / "policy.d"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / RPC_POLICY).write_text(f"{RPC_SERVICE} * {RPC_CALLER} {RPC_TARGET} allow\n")
    home.qlite("policy", "lint")
    verdict = home.qlite_json("policy", "eval", RPC_SERVICE, RPC_CALLER, RPC_TARGET)
    if verdict["action"] != "allow" or RPC_POLICY not in str(verdict["rule"]):
        raise BenchError(f"the policy does not allow the bench's call by its own rule: {verdict}")
    home.qlite("start", RPC_CALLER, RPC_TARGET)
    # /run is the target's tmpfs: the service goes with the qube.
    home.qlite(
        "run",
        "-u",
        "root",
        RPC_TARGET,
        "--",
        "sh",
        "-c",
        'mkdir -p "${1%/*}" && printf %s "$2" > "$1" && chmod 755 "$1"',
        "sh",
        RPC_SERVICE_PATH,
        RPC_SERVICE_SCRIPT,
    )
    return verdict["rule"]


def rpc_records(home: BenchHome) -> list[dict]:
    return [
        r
        for r in home.qlite_json("log", "rpc", "-n", "100000")
        if r.get("service") == RPC_SERVICE and r.get("source") == RPC_CALLER
    ]


def check_rpc_log(home: BenchHome, rule: str, expected: int) -> dict:
    """The bench made EXPECTED calls: each allowed by the bench's rule, sent
    to the target and ended with exit 0."""
    records = rpc_records(home)
    allowed = [r for r in records if r.get("decision") == "allow"]
    done = [r for r in records if r.get("decision") == "done"]
    others = [r for r in records if r.get("decision") not in ("allow", "done")]
    if others:
        raise BenchError(f"the RPC log shows bench calls that were not allowed: {others[0]}")
    if any(r.get("rule") != rule or r.get("resolved") != RPC_TARGET for r in allowed):
        raise BenchError(f"a bench call was allowed by another rule than {rule} or went elsewhere")
    if len(allowed) != expected or len(done) != expected or any(r.get("exit") != 0 for r in done):
        raise BenchError(
            f"the RPC log shows {len(allowed)} calls allowed and {len(done)} done, "
            f"expected {expected} each, all with exit 0"
        )
    return {"rpc_calls_logged_allowed": len(allowed), "rpc_calls_logged_done": len(done), "rpc_rule": rule}


def measure_rpc(home: BenchHome, runs: int) -> dict:
    rule = prepare_rpc(home)
    cases = rpc_cases()
    samples, outputs, _ = measure_in_qubes(
        home, cases, runs, stdin=RPC_MESSAGE, expect=RPC_MESSAGE, exact=True, warmup=RPC_WARMUP, batches=RPC_BATCHES
    )
    if any(out != RPC_MESSAGE for outs in outputs.values() for out in outs):
        raise BenchError("a timed RPC run did not echo its input")
    checks = check_rpc_log(home, rule, RPC_WARMUP + runs)
    states = {r["name"]: r["state"] for r in home.qlite_json("ls")}
    if states.get(RPC_TARGET) != "Running":
        raise BenchError(f"{RPC_TARGET} is {states.get(RPC_TARGET)}, not Running, after the calls")
    return {"cases": cases, "samples": samples, "checks": checks}


# --------------------------------------------------------------------------
# A command in a running qube


def runsc_root_of(pid: int) -> str:
    """The --root that the runsc process PID (a running container's
    sandbox, started by podman through qlite's wrapper) was given: where
    runsc exec finds the container."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError as exc:
        raise BenchError(f"cannot read the sandbox's command line: {exc}") from None
    for i, arg in enumerate(argv):
        if arg.startswith("--root="):
            return arg.removeprefix("--root=")
        if arg == "--root" and i + 1 < len(argv):
            return argv[i + 1]
    raise BenchError(f"the sandbox (pid {pid}) was started without --root: {argv[:4]}")


def running_cases(home: BenchHome, runsc: str) -> list[disposable.Case]:
    """`qlite run` into the running RPC_TARGET, and the same `true` through
    podman exec and runsc exec into the very same container."""
    container = f"qlite-{home.hash}-{RPC_TARGET}"
    info = json.loads(home.podman("inspect", "--type", "container", container).stdout)[0]
    if info["State"]["Status"] != "running":
        raise BenchError(f"{container} is {info['State']['Status']}, not running")
    root = runsc_root_of(int(info["State"]["Pid"]))
    return [
        disposable.Case(
            "run_running",
            f"qlite run {RPC_TARGET} -- true (running)",
            (*QLITE, "run", RPC_TARGET, "--", "true"),
            home.env,
        ),
        disposable.Case(
            "podman_exec", "podman exec, qlite-runsc", ("podman", "exec", container, "true"), home.podman_env
        ),
        disposable.Case("runsc_exec", "runsc exec", (runsc, f"--root={root}", "exec", info["Id"], "true"), home.env),
    ]


def measure_running(home: BenchHome, runsc: str, runs: int) -> dict:
    cases = running_cases(home, runsc)
    samples = disposable.measure_latency(cases, runs, home.path)
    return {"cases": cases, "samples": samples}


# --------------------------------------------------------------------------
# Split GPG


def measure_gpg(home: BenchHome, runs: int) -> dict:
    fpr = splitgpg.prepare_vault(home)
    cases = splitgpg.signing_cases(fpr)
    splitgpg.approve_first_use(home, splitgpg.e2e_cases(fpr)[0])
    samples, signatures, _ = splitgpg.measure_signing(home, cases, runs)
    print("  verifying the signatures in the vault", file=sys.stderr, flush=True)
    verified = sum(
        splitgpg.verify_in_vault(home, fpr, splitgpg.MESSAGE, signatures[c.key], f"case {c.key}") for c in cases
    )
    # Every split call after the approved first one: warm-up and timed.
    auto_accepted = splitgpg.check_calls(home, splitgpg.WARMUP + runs)
    return {
        "cases": cases,
        "samples": samples,
        "fpr": fpr,
        "checks": {"gpg_signatures_verified": verified, "gpg_rpc_auto_accepted_calls": auto_accepted},
    }


# --------------------------------------------------------------------------
# qlite ls


def ls_cases(home: BenchHome, when: str) -> list[disposable.Case]:
    return [
        disposable.Case(f"ls_{when}", "qlite ls", (*QLITE, "ls"), home.env),
        disposable.Case(f"ls_json_{when}", "qlite ls --json", (*QLITE, "ls", "--json"), home.env),
    ]


def defined_qubes(home: BenchHome) -> list[str]:
    return [r["name"] for r in home.qlite_json("ls") if r["class"] != "TemplateVM"]


def check_listed(home: BenchHome, names: list[str]) -> None:
    """Both listings name every qube the bench defined."""
    # Wide enough that rich neither wraps nor shortens a name.
    table = run([*QLITE, "ls"], {**home.env, "COLUMNS": "1000"}, home.path).stdout.split()
    missing = sorted(set(names) - set(defined_qubes(home))) + sorted(set(names) - set(table))
    if missing:
        raise BenchError(f"qlite ls does not list {missing[:5]} ({len(missing)} missing)")


def measure_ls(home: BenchHome, n_qubes: int, runs: int) -> dict:
    before = len(defined_qubes(home))
    print(f"  qlite ls with the bench's {before} qubes", file=sys.stderr, flush=True)
    samples = disposable.measure_latency(ls_cases(home, "base"), runs, home.path)
    names = [f"{LS_PREFIX}{i:03d}" for i in range(1, n_qubes + 1)]
    create_bulk(home, names, "--label", "gray", "--netvm", "none", what="halted qubes for qlite ls")
    check_listed(home, names)
    after = len(defined_qubes(home))
    print(f"  qlite ls with {after} qubes", file=sys.stderr, flush=True)
    samples |= disposable.measure_latency(ls_cases(home, "many"), runs, home.path)
    return {"samples": samples, "qubes_before": before, "qubes_after": after}


# --------------------------------------------------------------------------
# Results


def pair(samples: list[float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_p50_s": p50(samples), f"{prefix}_p95_s": p95(samples)}


def build_result(
    args: argparse.Namespace,
    facts: dict,
    lat: dict[str, list[float]],
    lat_cases: list,
    memory: dict,
    rpc: dict,
    running: dict,
    gpg: dict,
    ls: dict,
) -> dict:
    per_qube = memory["per_qube"]
    pss = [q["gvisor_pss_mib"] for q in per_qube.values()]
    rs, gs, ls_s, run_s = rpc["samples"], gpg["samples"], ls["samples"], running["samples"]
    r = {
        **pair(lat["a"], "cold"),
        **pair(lat["b"], "cold_offline"),
        **pair(lat["f"], "preloaded"),
        **pair(lat["c"], "podman_run"),
        **pair(lat["e"], "podman_run_net"),
        **pair(lat["d"], "runsc_do"),
        **pair(rs["rpc"], "rpc_call"),
        **pair(rs["rpc_local"], "rpc_local"),
        **pair(run_s["run_running"], "run_running"),
        **pair(run_s["podman_exec"], "podman_exec"),
        **pair(run_s["runsc_exec"], "runsc_exec"),
        **pair(gs["a"], "gpg_split_sign"),
        **pair(gs["b"], "gpg_local_sign"),
        **pair(ls_s["ls_base"], "ls_base"),
        **pair(ls_s["ls_json_base"], "ls_json_base"),
        **pair(ls_s["ls_many"], "ls"),
        **pair(ls_s["ls_json_many"], "ls_json"),
    }
    r |= {
        "ratio_cold_to_podman_run_net_p50": r["cold_p50_s"] / r["podman_run_net_p50_s"],
        "ratio_cold_to_podman_run_p50": r["cold_p50_s"] / r["podman_run_p50_s"],
        "ratio_cold_offline_to_podman_run_p50": r["cold_offline_p50_s"] / r["podman_run_p50_s"],
        "ratio_preloaded_to_runsc_do_p50": r["preloaded_p50_s"] / r["runsc_do_p50_s"],
        "ratio_preloaded_to_podman_run_p50": r["preloaded_p50_s"] / r["podman_run_p50_s"],
        "ratio_podman_run_to_runsc_do_p50": r["podman_run_p50_s"] / r["runsc_do_p50_s"],
        "ratio_rpc_call_to_local_p50": r["rpc_call_p50_s"] / r["rpc_local_p50_s"],
        "rpc_call_minus_local_p50_s": r["rpc_call_p50_s"] - r["rpc_local_p50_s"],
        "ratio_run_running_to_podman_exec_p50": r["run_running_p50_s"] / r["podman_exec_p50_s"],
        "ratio_run_running_to_runsc_exec_p50": r["run_running_p50_s"] / r["runsc_exec_p50_s"],
        "ratio_gpg_split_to_local_p50": r["gpg_split_sign_p50_s"] / r["gpg_local_sign_p50_s"],
        "ratio_ls_to_base_p50": r["ls_p50_s"] / r["ls_base_p50_s"],
        "ratio_ls_json_to_base_p50": r["ls_json_p50_s"] / r["ls_json_base_p50_s"],
        "density": args.density,
        "idle_memavailable_drop_per_qube_mib": memory["memavailable_drop_mib"],
        "idle_pss_per_qube_p50_mib": p50(pss),
        "idle_pss_per_qube_p95_mib": p95(pss) if len(pss) > 1 else pss[0],
        "idle_pss_per_qube_mean_mib": statistics.fmean(pss),
        "idle_uss_per_qube_mean_mib": disposable.mean_of(per_qube, "gvisor_uss_mib"),
        "idle_conmon_pss_per_qube_mib": disposable.mean_of(per_qube, "conmon_pss_mib"),
        "idle_start_all_s": memory["start_all_s"],
        "ls_qubes_before": ls["qubes_before"],
        "ls_qubes_defined": ls["qubes_after"],
        "runs": args.runs,
        "rpc_runs": args.rpc_runs,
        "run_runs": args.run_runs,
        "gpg_runs": args.gpg_runs,
        "ls_runs": args.ls_runs,
        "workers": args.workers,
        **rpc["checks"],
        **gpg["checks"],
        "gpg_key_fingerprint": gpg["fpr"],
        "host": facts,
        "published_not_measured_here": PUBLISHED,
        "cases": {
            **{
                f"disposable_{c.key}": {"label": c.label, "argv": list(c.argv), "timed": "from the host"}
                for c in lat_cases
            },
            **{
                c.key: {"label": c.label, "qube": c.qube, "argv": list(c.argv), "timed": "inside the qube"}
                for c in rpc["cases"]
            },
            **{c.key: {"label": c.label, "argv": list(c.argv), "timed": "from the host"} for c in running["cases"]},
            **{
                f"gpg_{c.key}": {"label": c.label, "qube": c.qube, "argv": list(c.argv), "timed": "inside the qube"}
                for c in gpg["cases"]
            },
        },
        "samples_s": {
            **{f"disposable_{k}": v for k, v in lat.items()},
            **rs,
            **run_s,
            **{f"gpg_{k}": v for k, v in gs.items()},
            **ls_s,
        },
        "idle_per_qube": per_qube,
    }
    r["targets"] = targets(r)
    return r


# Speed and memory targets: what is measured, the key holding it, the
# limit, and how the figure prints. Each is a p50 from this one run.
TARGETS = [
    ("RPC call adds to the service's own run", "rpc_call_minus_local_p50_s", 0.025, "ms"),
    ("split-GPG sign / gpg in the vault", "ratio_gpg_split_to_local_p50", 2.0, "x"),
    ("cold disposable, networked / podman run, bridge", "ratio_cold_to_podman_run_net_p50", 1.0, "x"),
    ("cold disposable, offline / podman run, none", "ratio_cold_offline_to_podman_run_p50", 1.0, "x"),
    ("preloaded disposable / runsc do true", "ratio_preloaded_to_runsc_do_p50", 0.5, "x"),
    ("qlite run RUNNING -- true / podman exec", "ratio_run_running_to_podman_exec_p50", 0.5, "x"),
    ("qlite ls, all the bench's qubes", "ls_p50_s", 0.080, "ms"),
    ("idle qube, gVisor PSS (agent included)", "idle_pss_per_qube_p50_mib", 20.0, "MiB"),
]


def targets(r: dict) -> dict[str, dict]:
    """Each target with its measured value, its limit and whether it is met."""
    return {
        key: {"label": label, "measured": r[key], "limit": limit, "met": r[key] <= limit}
        for label, key, limit, _unit in TARGETS
    }


def show_target(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f}x" if unit == "x" else f"{value:.1f} {unit}"


# Table rows: label, key prefix, baseline label, baseline key prefix, published (text) or None.
def table_rows(r: dict) -> list[tuple[str, str, str | None, str | None, str | None]]:
    p = r["published_not_measured_here"]
    n, b = r["ls_qubes_defined"], r["ls_qubes_before"]
    return [
        (
            "disposable cold: qlite run --disposable (net)",
            "cold",
            "podman run, bridge",
            "podman_run_net",
            f"{p['qubes_disposable_cold_s']} s",
        ),
        ("disposable cold, offline dvm", "cold_offline", "podman run, no net", "podman_run", None),
        (
            "disposable preloaded, offline dvm",
            "preloaded",
            "runsc do true",
            "runsc_do",
            f"{p['qubes_disposable_preloaded_s']} s",
        ),
        ("  the same", "preloaded", "podman run, no net", "podman_run", None),
        ("podman run --rm --network=none, qlite-runsc", "podman_run", "runsc do true", "runsc_do", None),
        ("podman run --rm, bridge, qlite-runsc", "podman_run_net", None, None, None),
        ("runsc --network=none do true", "runsc_do", None, None, None),
        (
            f"RPC call {RPC_CALLER} -> {RPC_TARGET} (in qube)",
            "rpc_call",
            "same command, local",
            "rpc_local",
            f"{p['qubes_rpc_call_ms']} ms",
        ),
        (f"qlite run {RPC_TARGET} -- true (running)", "run_running", "podman exec", "podman_exec", None),
        ("  the same", "run_running", "runsc exec", "runsc_exec", None),
        ("podman exec, qlite-runsc", "podman_exec", "runsc exec", "runsc_exec", None),
        ("runsc exec", "runsc_exec", None, None, None),
        ("split GPG sign, qlite-gpg (in qube)", "gpg_split_sign", "gpg in the vault", "gpg_local_sign", None),
        (f"qlite ls, {n} qubes", "ls", f"qlite ls, {b} qubes", "ls_base", None),
        (f"qlite ls --json, {n} qubes", "ls_json", f"qlite ls --json, {b} qubes", "ls_json_base", None),
    ]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def render(result: dict) -> None:
    r, h = result, result["host"]
    print(
        f"\nqlite bench suite: disposables {r['runs']} runs per case, RPC {r['rpc_runs']}, split GPG "
        f"{r['gpg_runs']}, qlite ls {r['ls_runs']}; density {r['density']} idle qubes"
    )
    print(
        f"host: kernel {h['kernel']}, {h['cpu_count']} CPUs, {h['mem_total_mib']} MiB, runsc {h['runsc_version']} "
        f"({h['platform']}), podman {h['podman_version']}, netpath {h['netpath']}\n"
    )
    head = f"{'measured here':<46} {'p50':>8} {'p95':>8}   {'baseline (measured here)':<26} {'p50':>8} {'ratio':>7}"
    print(f"{head}   Qubes OS (PUBLISHED)*")
    for label, key, base_label, base_key, published in table_rows(r):
        line = f"{label:<46} {ms(r[key + '_p50_s']):>8} {ms(r[key + '_p95_s']):>8}   "
        if base_key:
            base = r[base_key + "_p50_s"]
            line += f"{base_label:<26} {ms(base):>8} {r[key + '_p50_s'] / base:>6.2f}x"
        else:
            line += f"{'':<26} {'':>8} {'':>7}"
        print(line + (f"   {published}" if published else ""))
    print(
        f"\nidle density: {r['density']} app qubes (--netvm none), started by one qlite start "
        f"in {r['idle_start_all_s']:.1f} s"
    )
    print(
        f"{'  MemAvailable drop per qube':<46} {r['idle_memavailable_drop_per_qube_mib']:>5.1f} MiB"
        f"{'':<40}   {r['published_not_measured_here']['qubes_appvm_default_memory_mb']} MB (default memory)"
    )
    print(
        f"{'  gVisor PSS per qube (over the qubes)':<46} {r['idle_pss_per_qube_p50_mib']:>5.1f} MiB p50, "
        f"{r['idle_pss_per_qube_p95_mib']:.1f} p95; USS mean {r['idle_uss_per_qube_mean_mib']:.1f}, "
        f"conmon PSS {r['idle_conmon_pss_per_qube_mib']:.1f}"
    )
    print(
        f"\nchecks: {r['rpc_calls_logged_done']} RPC calls logged as done with exit 0 under {r['rpc_rule']}; "
        f"{r['gpg_signatures_verified']} signatures verified; "
        f"{r['gpg_rpc_auto_accepted_calls']} qubes.Gpg calls auto-accepted"
    )
    print("\ntargets (p50, this run)")
    for label, key, limit, unit in TARGETS:
        t = r["targets"][key]
        verdict = "met" if t["met"] else f"MISSED by {show_target(t['measured'] - limit, unit)}"
        print(f"  {label:<52} {show_target(t['measured'], unit):>9}  limit {show_target(limit, unit):>8}  {verdict}")
    print(
        f"  {'whole RPC call against Qubes OS (PUBLISHED)':<52} {ms(r['rpc_call_p50_s']):>9}  "
        f"Qubes {r['published_not_measured_here']['qubes_rpc_call_ms']} ms"
    )
    p = r["published_not_measured_here"]
    print(
        "\n* PUBLISHED by Qubes OS, NOT measured here (other hardware, Xen VMs): "
        f"{p['sources']['disposables and memory']}; RPC: {p['sources']['rpc']}."
    )


def plot_rows(r: dict) -> list[tuple[str, str, bool]]:
    """Latency bars: label, key prefix, and whether it is a baseline."""
    n, b = r["ls_qubes_defined"], r["ls_qubes_before"]
    return [
        ("qlite disposable, cold (network)", "cold", False),
        ("qlite disposable, cold, offline", "cold_offline", False),
        ("qlite disposable, preloaded, offline", "preloaded", False),
        ("podman run --rm, no network", "podman_run", True),
        ("podman run --rm, bridge", "podman_run_net", True),
        ("runsc --network=none do true", "runsc_do", True),
        ("qlite RPC call (in qube)", "rpc_call", False),
        ("RPC: same command, local", "rpc_local", True),
        ("qlite run, running qube", "run_running", False),
        ("podman exec, running container", "podman_exec", True),
        ("runsc exec, running container", "runsc_exec", True),
        ("qlite split GPG sign (in qube)", "gpg_split_sign", False),
        ("gpg in the vault", "gpg_local_sign", True),
        (f"qlite ls, {n} qubes", "ls", False),
        (f"qlite ls, {b} qubes", "ls_base", True),
        (f"qlite ls --json, {n} qubes", "ls_json", False),
        (f"qlite ls --json, {b} qubes", "ls_json_base", True),
    ]


def plot(result: dict, out: Path) -> None:
    """p50 bars with p95 whiskers (log scale) and a memory panel; Qubes'
    published figures hatched and labelled as such."""
    import matplotlib  # noqa: PLC0415 - only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    r, p = result, result["published_not_measured_here"]
    rows = plot_rows(r)
    labels = [label for label, *_ in rows]
    mid = [r[f"{key}_p50_s"] * 1000 for _, key, _ in rows]
    hi = [r[f"{key}_p95_s"] * 1000 - m for (_, key, _), m in zip(rows, mid, strict=True)]
    colors = ["tab:gray" if baseline else "tab:blue" for *_, baseline in rows]
    published = [
        ("Qubes: disposable, cold", p["qubes_disposable_cold_s"] * 1000),
        ("Qubes: disposable, preloaded", p["qubes_disposable_preloaded_s"] * 1000),
        ("Qubes: RPC call", p["qubes_rpc_call_ms"]),
    ]

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [3, 1.3]})
    y = list(range(len(rows)))
    lat.barh(y, mid, xerr=[[0] * len(rows), hi], color=colors, capsize=3)
    py = list(range(len(rows), len(rows) + len(published)))
    lat.barh(py, [v for _, v in published], color="white", edgecolor="tab:gray", hatch="//")
    lat.legend(
        handles=[
            Patch(color="tab:blue", label="qlite, measured"),
            Patch(color="tab:gray", label="baseline, measured"),
            Patch(facecolor="white", edgecolor="tab:gray", hatch="//", label="Qubes OS, published (not measured)"),
        ],
        loc="upper right",
        fontsize=8,
    )
    lat.set_yticks(y + py, labels + [name + " (published)" for name, _ in published], fontsize=8)
    lat.invert_yaxis()
    lat.set_xscale("log")
    lat.set_xlabel("time, ms (bar p50, whisker p95; log scale)")
    lat.set_title("latency")

    mem_rows = [
        ("MemAvailable drop / qube", r["idle_memavailable_drop_per_qube_mib"], 0.0),
        (
            "gVisor PSS / qube",
            r["idle_pss_per_qube_p50_mib"],
            r["idle_pss_per_qube_p95_mib"] - r["idle_pss_per_qube_p50_mib"],
        ),
    ]
    my = list(range(len(mem_rows)))
    mem.barh(
        my,
        [v for _, v, _ in mem_rows],
        xerr=[[0] * len(mem_rows), [e for *_, e in mem_rows]],
        color="tab:green",
        capsize=3,
    )
    mem.barh([len(mem_rows)], [p["qubes_appvm_default_memory_mb"]], color="white", edgecolor="tab:gray", hatch="//")
    mem.set_yticks(
        my + [len(mem_rows)], [name for name, *_ in mem_rows] + ["Qubes: AppVM default (published)"], fontsize=8
    )
    mem.invert_yaxis()
    mem.set_xlabel("MiB (Qubes: MB) per idle qube")
    mem.set_title(f"idle density, {r['density']} qubes")

    h = r["host"]
    fig.suptitle(
        f"qlite bench suite: {h['cpu_count']} CPUs, kernel {h['kernel']}, runsc {h['runsc_version']} ({h['platform']})",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"plot written to {out}")


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per disposable case (default 30)")
    parser.add_argument("--density", type=int, default=50, help="idle app qubes to start (default 50)")
    parser.add_argument("--rpc-runs", type=int, default=50, help="timed RPC calls and local runs (default 50)")
    parser.add_argument(
        "--run-runs", type=int, default=30, help="timed commands in a running qube, per case (default 30)"
    )
    parser.add_argument("--gpg-runs", type=int, default=30, help="timed signatures per case (default 30)")
    parser.add_argument("--ls-qubes", type=int, default=200, help="halted qubes to define for qlite ls (default 200)")
    parser.add_argument("--ls-runs", type=int, default=10, help="timed runs of each qlite ls (default 10)")
    parser.add_argument(
        "--workers",
        type=int,
        default=BULK_WORKERS,
        help=f"qlite create/remove processes at once for the many qubes (default {BULK_WORKERS})",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"write results here, and the plot next to it as .png (default {DEFAULT_JSON})",
    )
    args = parser.parse_args(argv)
    if min(args.runs, args.rpc_runs, args.run_runs, args.gpg_runs, args.ls_runs) < 2:
        parser.error("--runs, --rpc-runs, --run-runs, --gpg-runs and --ls-runs must be at least 2")
    if min(args.density, args.ls_qubes, args.workers) < 1:
        parser.error("--density, --ls-qubes and --workers must be at least 1")
    warn_if_few_runs(min(args.runs, args.rpc_runs, args.gpg_runs))
    return args


def run_bench(home: BenchHome, args: argparse.Namespace) -> dict:
    home.bulk_workers = args.workers
    started = time.monotonic()

    def stage(name: str) -> None:
        print(f"\n== [{time.monotonic() - started:5.0f} s] {name}", file=sys.stderr, flush=True)

    stage("setting up (qlite setup, disposable templates, daemon)")
    setup = disposable.prepare(home)
    stage(f"1. disposable latency, {args.runs} rounds")
    lat_cases = disposable.latency_cases(home, setup)
    lat = disposable.measure_latency(lat_cases, args.runs, home.path)
    disposable.stop_preloading(home)
    stage(f"2. idle density, {args.density} qubes")
    memory = disposable.measure_memory(home, args.density)
    remove_bulk(home, disposable.idle_names(args.density))
    stage(f"3. RPC call latency, {args.rpc_runs} calls")
    rpc = measure_rpc(home, args.rpc_runs)
    stage(f"4. a command in a running qube, {args.run_runs} rounds")
    running = measure_running(home, setup.probe["runsc"], args.run_runs)
    stage(f"5. split GPG signing, {args.gpg_runs} signatures")
    gpg = measure_gpg(home, args.gpg_runs)
    stage(f"6. qlite ls with {args.ls_qubes} more qubes")
    ls = measure_ls(home, args.ls_qubes, args.ls_runs)
    stage("done measuring")
    facts = host_facts(home, setup.probe, netpath=setup.netpath, **splitgpg.key_facts(home, gpg["fpr"]))
    return build_result(args, facts, lat, lat_cases, memory, rpc, running, gpg, ls)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.json or DEFAULT_JSON

    def render_and_plot(result: dict) -> None:
        render(result)
        plot(result, out.with_suffix(".png"))

    return bench_main("bench/suite.py", args, run_bench, render_and_plot, DEFAULT_JSON)


if __name__ == "__main__":
    sys.exit(main())
