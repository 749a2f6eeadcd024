"""Split GPG signing latency of qlite, against gpg run locally in the vault,
measured in the same run on the same machine.

Run as root:  .venv/bin/python bench/splitgpg.py [--runs N] [--json OUT]

A client qube ``work`` signs through an offline vault qube ``vault``
that holds an ed25519 key made by ``qlite splitgpg gen-key``. The message
is a few hundred bytes; every signature is detached and armored.

  a. ``qlite-gpg -bsa -u FPR`` in ``work``: split GPG. The request goes
     through qlite's RPC broker to the qubes.Gpg service in the vault,
     which runs gpg there.
  b. ``gpg --batch -bsa -u FPR`` in ``vault``: the same signature made
     locally by the vault's gpg (the baseline).

Each signature is timed inside its qube, by a python3 loop that puts
time.perf_counter around subprocess.run. So ``qlite run``'s own start-up,
which every command from the host pays, is in neither case, and a/b is
what split GPG costs over local gpg. The first use was approved (as a user
would answer the question) before the clock runs. ``--autoaccept 3600``
then covers every timed call, so no call waits for a question, and the
bench checks in the RPC log that each call was auto-accepted. After one
warm-up batch of each case, the runs go in interleaved batches (a, b, a,
b, ...) so that drift of the machine hits both cases alike.

For reference, the bench also times from the host what a user waits for
end to end, INCLUDING ``qlite run``'s start-up, over a few runs:

  c. ``qlite run work -- sh -c 'echo x | qlite-gpg -bsa -u FPR'``
  d. ``qlite run vault -- sh -c 'echo x | gpg --batch -bsa -u FPR'``

Every signature made in a timed run is verified afterwards with
``gpg --verify`` in the vault, so a broken path cannot pass as a fast one.

The bench works in its own QLITE_HOME under /var/tmp. On exit, including
Ctrl-C and errors, it stops the vault's gpg-agent, removes everything it
made and checks by label that nothing is left.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# The script runs as `python bench/splitgpg.py`, which puts bench/ on
# sys.path; this keeps `python -P` (safe path) working too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    CMD_TIMEOUT_S,
    QLITE,
    REPO,
    BenchError,
    BenchHome,
    QubeCase,
    batch_sizes,
    bench_main,
    create_qube,
    host_facts,
    last_line,
    measure_in_qubes,
    p50,
    p95,
    parse_runs_args,
    setup_home,
)

DEFAULT_JSON = REPO / "bench" / "results" / "splitgpg.json"
CLIENT = "work"
VAULT = "vault"
SERVICE = "qubes.Gpg"
AUTOACCEPT_S = 3600
KEY_NAME = "Bench Vault"
KEY_EMAIL = "bench-vault@qlite.test"
BATCHES = 6
WARMUP = 2
E2E_RUNS = 5
ASK_WAIT_S = 60
SIG_HEAD = "-----BEGIN PGP SIGNATURE-----"
MESSAGE = (
    "qlite split GPG bench message.\n"
    "A detached, armored signature of these few hundred bytes is made either by\n"
    "the vault's own gpg or, through qubes.Gpg, for the client qube 'work'.\n"
    "The secret key never leaves the vault; the client only sees signatures.\n"
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
)
E2E_MESSAGE = "x\n"  # what `echo x` writes
# OpenPGP public-key algorithm ids (RFC 4880 9.1, RFC 6637, RFC 9580), as gpg lists them.
PUBKEY_ALGOS = {"1": "RSA", "16": "Elgamal", "17": "DSA", "18": "ECDH", "19": "ECDSA", "22": "EdDSA"}

# Run inside the vault: verify each signature of spec["message"] and print
# gpg's exit code and status lines per signature.
VERIFIER = """\
import json, os, subprocess, sys, tempfile
spec = json.loads(sys.argv[1])
results = []
with tempfile.TemporaryDirectory() as d:
    msg = os.path.join(d, "msg")
    with open(msg, "w") as f:
        f.write(spec["message"])
    for i, sig in enumerate(spec["signatures"]):
        path = os.path.join(d, f"sig{i}.asc")
        with open(path, "w") as f:
            f.write(sig)
        proc = subprocess.run(["gpg", "--batch", "--status-fd", "1", "--verify", path, msg],
                              capture_output=True, text=True)
        results.append({"exit": proc.returncode, "status": proc.stdout})
print(json.dumps(results))
"""


def signing_cases(fpr: str) -> list[QubeCase]:
    return [
        QubeCase(
            "a", f"qlite-gpg -bsa -u FPR in {CLIENT} (split, via {VAULT})", CLIENT, ("qlite-gpg", "-bsa", "-u", fpr)
        ),
        QubeCase(
            "b", f"gpg --batch -bsa -u FPR in {VAULT} (local, baseline)", VAULT, ("gpg", "--batch", "-bsa", "-u", fpr)
        ),
    ]


def e2e_cases(fpr: str) -> list[QubeCase]:
    return [
        QubeCase(
            "c",
            f"qlite run {CLIENT} -- sh -c 'echo x | qlite-gpg -bsa -u FPR'",
            CLIENT,
            ("sh", "-c", f"echo x | qlite-gpg -bsa -u {fpr}"),
        ),
        QubeCase(
            "d",
            f"qlite run {VAULT} -- sh -c 'echo x | gpg --batch -bsa -u FPR'",
            VAULT,
            ("sh", "-c", f"echo x | gpg --batch -bsa -u {fpr}"),
        ),
    ]


# --------------------------------------------------------------------------
# Setting up


def prepare(home: BenchHome) -> str:
    """Set the home up with a client and an offline vault holding a fresh
    key; return the key's fingerprint."""
    setup_home(home)
    home.qlite("daemon", "start")
    return prepare_vault(home)


def prepare_vault(home: BenchHome) -> str:
    """In a home that is set up, with the daemon running: the client and an
    offline vault holding a fresh key; return the key's fingerprint."""
    # A batch cut short (Ctrl-C) leaves its signing loop running in the
    # client after `qlite run` is gone: stop the client before anything else.
    home.before_removal.append(lambda: home.qlite("kill", CLIENT, check=False))
    create_qube(home, CLIENT, "--netvm", "none", "--label", "blue")
    home.qubes.append(VAULT)  # splitgpg setup creates it
    # gen-key starts a gpg-agent in the vault, which lives on there.
    home.before_removal.append(lambda: home.qlite("run", VAULT, "--", "gpgconf", "--kill", "gpg-agent", check=False))
    home.qlite("splitgpg", "setup", VAULT, "--client", CLIENT, "--autoaccept", str(AUTOACCEPT_S))
    fpr = home.qlite("splitgpg", "gen-key", VAULT, "--name", KEY_NAME, "--email", KEY_EMAIL, timeout=300).stdout.strip()
    if len(fpr) != 40:
        raise BenchError(f"splitgpg gen-key printed {fpr!r}, not a fingerprint")
    return fpr


def approve_first_use(home: BenchHome, case: QubeCase) -> None:
    """Make the first split GPG call and answer its question with yes, as a
    user would; the approval then stands for the autoaccept window."""
    proc = subprocess.Popen(
        [*QLITE, "run", case.qube, "--", *case.argv],
        env=home.env,
        cwd=home.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ask = wait_for_ask(home, proc)
        home.qlite("policy", "ask", str(ask["id"]), "allow")
        out, err = proc.communicate(timeout=CMD_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0 or SIG_HEAD not in out:
        raise BenchError(f"the first split GPG call exited {proc.returncode}: {last_line(err or out)}")


def wait_for_ask(home: BenchHome, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + ASK_WAIT_S
    while time.monotonic() < deadline:
        for ask in home.qlite_json("policy", "ask"):
            if ask["service"] == SERVICE and ask["source"] == CLIENT:
                return ask
        if proc.poll() is not None:
            raise BenchError(f"the first split GPG call ended (exit {proc.returncode}) without asking")
        time.sleep(0.2)
    raise BenchError(f"no {SERVICE} question from {CLIENT} appeared within {ASK_WAIT_S} s")


# --------------------------------------------------------------------------
# Measuring


def measure_signing(home: BenchHome, cases: list[QubeCase], runs: int) -> tuple[dict, dict, list[dict]]:
    """RUNS signatures per case, each timed inside its qube (the warm-up
    also starts the vault's gpg-agent): samples, signatures, batches."""
    return measure_in_qubes(home, cases, runs, stdin=MESSAGE, expect=SIG_HEAD, warmup=WARMUP, batches=BATCHES)


def time_from_host(home: BenchHome, case: QubeCase) -> tuple[float, str]:
    start = time.perf_counter()
    proc = home.qlite("run", case.qube, "--", *case.argv)
    elapsed = time.perf_counter() - start
    if SIG_HEAD not in proc.stdout:
        raise BenchError(f"case {case.key} ({case.label}) printed no signature")
    return elapsed, proc.stdout[proc.stdout.index(SIG_HEAD) :]


def measure_e2e(home: BenchHome, cases: list[QubeCase], runs: int) -> tuple[dict, dict]:
    for case in cases:
        time_from_host(home, case)  # warm-up
    samples: dict[str, list[float]] = {c.key: [] for c in cases}
    signatures: dict[str, list[str]] = {c.key: [] for c in cases}
    for _ in range(runs):
        for case in cases:
            elapsed, sig = time_from_host(home, case)
            samples[case.key].append(elapsed)
            signatures[case.key].append(sig)
    return samples, signatures


# --------------------------------------------------------------------------
# Checking


def verify_in_vault(home: BenchHome, fpr: str, message: str, signatures: list[str], what: str) -> int:
    """Verify every signature with the vault's gpg; return how many."""
    spec = {"message": message, "signatures": signatures}
    proc = home.qlite(
        "run", VAULT, "--", "python3", "-c", VERIFIER, json.dumps(spec), timeout=CMD_TIMEOUT_S + 2 * len(signatures)
    )
    results = json.loads(last_line(proc.stdout))
    if len(results) != len(signatures):
        raise BenchError(f"{what}: {len(results)} of {len(signatures)} signatures were checked")
    for i, r in enumerate(results):
        valid = [ln.split() for ln in r["status"].splitlines() if ln.startswith("[GNUPG:] VALIDSIG ")]
        if r["exit"] != 0 or not valid or fpr not in valid[0]:
            raise BenchError(f"{what}: signature {i + 1} does not verify as made by {fpr} (gpg exit {r['exit']})")
    return len(results)


def auto_accepted_calls(home: BenchHome) -> int:
    """How many qubes.Gpg calls of the client the broker auto-accepted."""
    records = home.qlite_json("log", "rpc", "-n", "100000")
    return sum(
        1
        for r in records
        if r.get("service") == SERVICE
        and r.get("source") == CLIENT
        and str(r.get("reason", "")).startswith("auto-accepted")
    )


def check_calls(home: BenchHome, expected: int) -> int:
    if home.qlite_json("policy", "ask"):
        raise BenchError("a question is pending: a timed call was not covered by the approval")
    counted = auto_accepted_calls(home)
    if counted < expected:
        raise BenchError(f"the RPC log shows {counted} auto-accepted {SERVICE} calls, expected {expected}")
    return counted


# --------------------------------------------------------------------------
# Results


def key_facts(home: BenchHome, fpr: str) -> dict:
    keys = home.qlite_json("splitgpg", "list", VAULT, "--secret")
    key = next(k for k in keys if k["fingerprint"] == fpr)
    gpg_version = home.qlite("run", VAULT, "--", "gpg", "--version").stdout.splitlines()[0]
    algo = f"{PUBKEY_ALGOS.get(key['algo'], 'algorithm')} ({key['algo']})"
    return {"key_fingerprint": fpr, "key_algo": algo, "gpg_version_in_vault": gpg_version}


def build_result(
    args: argparse.Namespace,
    facts: dict,
    cases: dict[str, QubeCase],
    samples: dict[str, list[float]],
    batches: list[dict],
    checks: dict,
) -> dict:
    a, b, c, d = (samples[k] for k in "abcd")
    return {
        "split_sign_p50_s": p50(a),
        "split_sign_p95_s": p95(a),
        "local_sign_p50_s": p50(b),
        "local_sign_p95_s": p95(b),
        "ratio_split_to_local_p50": p50(a) / p50(b),
        "ratio_split_to_local_p95": p95(a) / p95(b),
        "split_minus_local_p50_s": p50(a) - p50(b),
        "e2e_split_with_qlite_run_p50_s": p50(c),
        "e2e_split_with_qlite_run_max_s": max(c),
        "e2e_local_with_qlite_run_p50_s": p50(d),
        "e2e_local_with_qlite_run_max_s": max(d),
        "ratio_e2e_split_to_local_p50": p50(c) / p50(d),
        "runs": args.runs,
        "batches": len(batch_sizes(args.runs, BATCHES)),
        "warmup_per_case": WARMUP,
        "e2e_runs": E2E_RUNS,
        "message_bytes": len(MESSAGE.encode()),
        "autoaccept_s": AUTOACCEPT_S,
        **facts,
        **checks,
        "cases": {k: {"label": case.label, "qube": case.qube, "argv": list(case.argv)} for k, case in cases.items()},
        "timed": {
            "a": "inside the qube",
            "b": "inside the qube",
            "c": "from the host, including qlite run",
            "d": "from the host, including qlite run",
        },
        "samples_s": samples,
        "batches_s": batches,
    }


def render(result: dict) -> None:
    r = result
    print(
        f"\nqlite split GPG bench: {r['runs']} signatures per case in {r['batches']} interleaved batches "
        f"after a warm-up of {r['warmup_per_case']} each"
    )
    print(
        f"host: kernel {r['kernel']}, {r['cpu_count']} CPUs, {r['mem_total_mib']} MiB, runsc {r['runsc_version']} "
        f"({r['platform']}), podman {r['podman_version']}"
    )
    print(
        f"key: {r['key_algo']} {r['key_fingerprint']}; {r['gpg_version_in_vault']}; "
        f"message {r['message_bytes']} bytes, detached armored signature\n"
    )
    print("timed inside the qube (qlite run's start-up not counted):")
    print(f"{'case':<63} {'p50 s':>7} {'p95 s':>7} {'/ b p50':>8}")
    base = r["local_sign_p50_s"]
    for key in "ab":
        xs = r["samples_s"][key]
        print(f"{key}  {r['cases'][key]['label']:<60} {p50(xs):>7.3f} {p95(xs):>7.3f} {p50(xs) / base:>7.2f}x")
    print(
        f"\n   split GPG adds {r['split_minus_local_p50_s'] * 1000:.0f} ms per signature at p50 "
        f"(a/b p50 {r['ratio_split_to_local_p50']:.2f}x, p95 {r['ratio_split_to_local_p95']:.2f}x)"
    )
    print(f"\nend to end from the host, INCLUDING qlite run ({r['e2e_runs']} runs each after one warm-up):")
    print(f"{'case':<63} {'p50 s':>7} {'max s':>7} {'/ d p50':>8}")
    base = r["e2e_local_with_qlite_run_p50_s"]
    for key in "cd":
        xs = r["samples_s"][key]
        print(f"{key}  {r['cases'][key]['label']:<60} {p50(xs):>7.3f} {max(xs):>7.3f} {p50(xs) / base:>7.2f}x")
    print(
        f"\nchecks: {r['signatures_verified']} signatures verified by gpg in the vault; "
        f"{r['rpc_auto_accepted_calls']} {SERVICE} calls auto-accepted (none asked)"
    )


# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse_runs_args(__doc__, argv, 30, "timed signatures per case (default 30)", DEFAULT_JSON)


def run_bench(home: BenchHome, args: argparse.Namespace) -> dict:
    fpr = prepare(home)
    signing, e2e = signing_cases(fpr), e2e_cases(fpr)
    approve_first_use(home, e2e[0])
    samples, signatures, batches = measure_signing(home, signing, args.runs)
    e2e_samples, e2e_signatures = measure_e2e(home, e2e, E2E_RUNS)
    print("  verifying the signatures in the vault", file=sys.stderr, flush=True)
    verified = sum(verify_in_vault(home, fpr, MESSAGE, signatures[k], f"case {k}") for k in "ab")
    verified += sum(verify_in_vault(home, fpr, E2E_MESSAGE, e2e_signatures[k], f"case {k}") for k in "cd")
    # Every split call after the approved first one: warm-up, timed and end to end.
    expected = WARMUP + args.runs + 1 + E2E_RUNS
    checks = {"signatures_verified": verified, "rpc_auto_accepted_calls": check_calls(home, expected)}
    facts = host_facts(home, home.probe(), **key_facts(home, fpr))
    cases = {c.key: c for c in (*signing, *e2e)}
    return build_result(args, facts, cases, {**samples, **e2e_samples}, batches, checks)


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench/splitgpg.py", parse_args(argv), run_bench, render, DEFAULT_JSON)


if __name__ == "__main__":
    sys.exit(main())
