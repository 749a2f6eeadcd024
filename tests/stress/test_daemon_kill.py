"""The daemon (and its RPC broker) killed with SIGKILL while calls are in
flight: to a running qube, and to a disposable the broker made for the
call. The callers get an error, nothing in the state is lost or left
inconsistent, and the daemon starts again and serves calls."""

from __future__ import annotations

import selectors
import subprocess

import pytest

from .conftest import caller_and_target, engine_objects, kill9, mismatches, rows, store_problems

pytestmark = pytest.mark.integration

EXIT_RPC_FAILED = 125
SLOW = "echo begun; exec sleep 120\n"


@pytest.fixture(scope="module")
def rpc(home):
    yield from caller_and_target(home, "qubes.VMShell * caller target allow\nqubes.VMShell * caller @dispvm allow\n")


def call(home, target: str, script: str) -> subprocess.Popen:
    proc = home.popen(
        "run",
        "caller",
        "--",
        "qrexec-client-vm",
        target,
        "qubes.VMShell",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(script.encode())
    proc.stdin.close()
    proc.stdin = None  # communicate() must not flush it again
    return proc


def first_line(proc: subprocess.Popen, timeout: float) -> bytes:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return b""
        return proc.stdout.readline()
    finally:
        sel.close()


def daemon_pid(home) -> int:
    return int((home.path / "run" / "daemon.pid").read_text())


def test_daemon_killed_mid_call(rpc):
    home = rpc
    before = {n: r for n, r in rows(home).items() if r["class"] != "DispVM"}
    calls = [call(home, "target", SLOW), call(home, "target", SLOW), call(home, "@dispvm", SLOW)]
    try:
        for proc in calls:
            assert first_line(proc, timeout=120) == b"begun\n"
        disposables = [n for n, r in rows(home).items() if r["class"] == "DispVM"]
        assert len(disposables) == 1, disposables

        pid = daemon_pid(home)
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        assert f"QLITE_HOME={home.path}".encode() in environ  # the daemon this test started
        kill9(pid)

        # Every caller gets an error, promptly: not a hang, not a success.
        for proc in calls:
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == EXIT_RPC_FAILED, (proc.returncode, err)
            assert err.strip(), "the caller was not told why"
    finally:
        for proc in calls:
            if proc.poll() is None:
                kill9(proc.pid)
                proc.wait()

    # Nothing was lost or broken: the same qubes, still running.
    assert store_problems(home) == []
    assert {n: r for n, r in rows(home).items() if r["class"] != "DispVM"} == before
    states = {r["name"]: r["state"] for r in home.json("ls")}
    assert states["caller"] == states["target"] == "Running"

    # The daemon starts again over its stale pidfile and sockets, and the
    # disposable it was running a call in is reaped.
    home.run("daemon", "start")
    assert daemon_pid(home) != pid
    report = home.json("reconcile")
    assert [n for n, r in rows(home).items() if r["class"] == "DispVM"] == [], report
    owned = {k: [n for n, labels in v.items() if "qlite.owner" in labels] for k, v in engine_objects(home).items()}
    assert owned == {"containers": [], "volumes": [], "networks": []}
    assert mismatches(home) == []

    # ...and it serves calls again, to the qube and to a new disposable.
    for target in ("target", "@dispvm"):
        proc = call(home, target, "echo again\n")
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, out) == (0, b"again\n"), err
