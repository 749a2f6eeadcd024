"""The daemon killed with SIGKILL while it serves qlite commands through
the real ``qlite`` entry point (qlite.served): every client is told, no
worker or fork server of the home survives it, the disposables the served
commands made are destroyed, and the next daemon serves again.

A served ``qlite run --disposable`` takes the SIGTERM its worker gets as
the daemon dies as it takes any SIGTERM: it destroys the disposable and
exits 143; the client adds that the daemon stopped. A command in a
running qube exits 125 as the daemon dies, and the client says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import kill9, wait_for

pytestmark = pytest.mark.integration

QLITE = str(Path(sys.executable).with_name("qlite"))  # the console script: the thin client
SLOW = ["sh", "-c", "echo begun; exec sleep 120"]
EXIT_TERMINATED = 128 + 15


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def served(home, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [QLITE, *args], env=home.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def daemon_pid(home) -> int:
    return int((home.path / "run" / "daemon.pid").read_text())


def test_the_daemon_killed_while_it_serves_commands(home):
    home.run("daemon", "stop", check=False)
    home.run("daemon", "start")
    pid = daemon_pid(home)
    server = wait_for(lambda: children(pid), timeout=30, interval=0.1)
    assert len(server) == 1, server
    server = server[0]
    assert wait_for(lambda: (home.path / "run" / "cli.sock").exists(), timeout=60, interval=0.1)

    # Served, through the real entry point: a listing, and two disposables.
    ls = served(home, "ls", "--json")
    out, err = ls.communicate(timeout=120)
    assert ls.returncode == 0, err
    runs = [served(home, "run", "--disposable", "--", *SLOW) for _ in range(2)]
    message = f"qlite: the qlite daemon stopped while serving this command; see {home.path}/log/daemon.log"
    try:
        for proc in runs:
            assert proc.stdout.readline() == b"begun\n"
        workers = children(server)
        assert len(workers) == 2, workers  # both run in the daemon's workers, not in their clients
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"QLITE_HOME={home.path}".encode() in environ  # the daemon this test started
        kill9(pid)

        for proc in runs:
            _out, err = proc.communicate(timeout=120)
            lines = err.decode().splitlines()
            assert proc.returncode == EXIT_TERMINATED, err
            assert lines[-2:] == ["qlite: interrupted; the disposable was destroyed", message], err
    finally:
        for proc in runs:
            if proc.poll() is None:
                kill9(proc.pid)
                proc.wait()

    assert wait_for(lambda: not [p for p in (server, *workers) if alive(p)], timeout=30), "a served process survived"
    assert wait_for(lambda: not any(home.disposable_leftovers().values()), timeout=60), home.disposable_leftovers()

    # With the daemon gone its socket is stale: commands run in the client.
    done = subprocess.run([QLITE, "ls"], env=home.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    # The next daemon serves again.
    home.run("daemon", "start")
    assert daemon_pid(home) != pid
    proc = served(home, "run", "--disposable", "--", "echo", "again")
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, out) == (0, b"again\n"), err
    home.run("daemon", "stop")


def test_a_command_in_a_qube_gets_the_line_and_125(home):
    """A served command in a running qube fails as the daemon dies: by the
    SIGTERM it does not handle, or by the daemon's end of its connection
    to the qube going away first. Either way its client exits 125 and
    says, last, that the daemon stopped."""
    home.run("daemon", "stop", check=False)
    home.run("create", "idle", "--label", "gray", "--netvm", "none")
    home.run("daemon", "start")
    home.run("start", "idle")
    pid = daemon_pid(home)
    proc = served(home, "run", "idle", "--", *SLOW)
    try:
        assert proc.stdout.readline() == b"begun\n"
        server = children(pid)
        workers = [w for s in server for w in children(s)]
        assert len(workers) == 1, workers
        kill9(pid)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill9(proc.pid)
            proc.wait()
    message = f"qlite: the qlite daemon stopped while serving this command; see {home.path}/log/daemon.log"
    assert (proc.returncode, err.decode().splitlines()[-1:]) == (125, [message]), err
    assert wait_for(lambda: not [p for p in (*server, *workers) if alive(p)], timeout=30), "a served process survived"
    home.run("kill", "idle", check=False)
    home.run("remove", "--force", "idle")
