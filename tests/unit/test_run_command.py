"""How a command starts in a qube and how Ctrl-C reaches it: the lookup
shim and the signal script (run here by the host's own /bin/sh, the same
dash as the template's), the interrupt relay, and the VM agent's SIGNAL
frame against the real agent code running on this host."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qlite.agent import channel as ch
from qlite.agent.client import exec_over
from qlite.domain.runcommand import RUN_TOKEN_ENV, new_run_token, shimmed, signal_argv
from qlite.engines.base import Stdio
from qlite.engines.interrupts import InterruptRelay, forwarding_sigint

from .guest_helpers import GUEST, short_tmpdir

# -- the lookup shim: 127 and 126 as podman and docker answer --------------------------------


def shim(tmp_path: Path, *argv: str, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess:
    return subprocess.run(
        shimmed(list(argv)), capture_output=True, text=True, timeout=30, cwd=tmp_path, env={"PATH": path}
    )


@pytest.fixture
def tools(tmp_path):
    """A PATH directory with an executable, a file that is not, and a directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "hello").write_text('#!/bin/sh\necho "hello $*"; exit 3\n')
    (bindir / "hello").chmod(0o755)
    (bindir / "plain").write_text("not a program\n")
    (bindir / "adir").mkdir()
    return bindir


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["no-such-command"], 127, "qlite: no-such-command: executable file not found in $PATH"),
        (["plain"], 127, "qlite: plain: executable file not found in $PATH"),  # not executable: not a match
        (["adir"], 127, "qlite: adir: executable file not found in $PATH"),
        ([""], 127, "qlite: : executable file not found in $PATH"),
        (["/no/such/program"], 127, "qlite: /no/such/program: no such file or directory"),
        (["{bin}/plain"], 126, "qlite: {bin}/plain: permission denied (not an executable file)"),
        (["{bin}/adir"], 126, "qlite: {bin}/adir: is a directory"),
        (["./bin/plain"], 126, "qlite: ./bin/plain: permission denied (not an executable file)"),
    ],
)
def test_a_command_that_cannot_run_gets_one_line_and_podmans_code(tmp_path, tools, argv, code, message):
    argv = [a.format(bin=tools) for a in argv]
    proc = shim(tmp_path, *argv, path=f"{tools}:/usr/bin:/bin")
    assert proc.returncode == code
    assert proc.stderr == message.format(bin=tools) + "\n" and proc.stdout == ""


def test_a_command_that_runs_keeps_its_arguments_output_and_exit_code(tmp_path, tools):
    proc = shim(tmp_path, "hello", "a b", "$HOME", "--", path=f"{tools}:/usr/bin:/bin")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "hello a b $HOME --\n", "")
    proc = shim(tmp_path, f"{tools}/hello", "x")
    assert (proc.returncode, proc.stdout) == (3, "hello x\n")
    # The command replaces the shell (same pid, so a signal reaches it), and
    # its own arguments are its own.
    p = subprocess.Popen(shimmed(["sh", "-c", 'echo "$0 $1 $$"', "zero", "one"]), stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=30)
    assert out == f"zero one {p.pid}\n"


# -- the signal script: every process of one run, and nothing else ---------------------------------


def test_the_signal_script_reaches_every_process_of_the_run_and_no_other(tmp_path):
    token, other = new_run_token(), new_run_token()
    script = "sleep 30 & sleep 30 & wait"  # a shell and what it started, like a terminal's job
    ours = subprocess.Popen(
        ["sh", "-c", script], env={"PATH": "/usr/bin:/bin", RUN_TOKEN_ENV: token}, start_new_session=True
    )
    theirs = subprocess.Popen(["sleep", "30"], env={RUN_TOKEN_ENV: other}, start_new_session=True)
    try:
        time.sleep(0.3)
        children = subprocess.run(["pgrep", "-P", str(ours.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        subprocess.run(signal_argv(token, signal.SIGTERM), check=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        assert ours.wait(10) == -signal.SIGTERM
        for pid in map(int, children):
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # reaped by init once the shell is gone
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert theirs.poll() is None  # another run's token: untouched
    finally:
        for p in (ours, theirs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


# -- the relay: SIGINT, then SIGTERM, then SIGKILL ------------------------------------------------


FAST = ((signal.SIGINT, 0.0), (signal.SIGTERM, 0.2), (signal.SIGKILL, 0.2))


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def test_an_interrupt_with_no_command_running_is_not_taken():
    relay = InterruptRelay(FAST)
    assert relay.interrupt() is False
    relay.attach(lambda sig: None)
    relay.detach()
    assert relay.interrupt() is False


def test_a_command_that_ignores_sigint_gets_sigterm_then_sigkill():
    relay = InterruptRelay(FAST)
    got: list[int] = []
    relay.attach(got.append)
    assert relay.interrupt() is True
    wait_for(lambda: len(got) == 3)
    assert got == [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] == relay.sent


def test_a_command_that_stops_is_not_signalled_further():
    relay = InterruptRelay(((signal.SIGINT, 0.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)))
    got: list[int] = []
    relay.attach(got.append)
    relay.interrupt()
    wait_for(lambda: got == [signal.SIGINT])
    relay.detach()  # it ended
    time.sleep(0.1)
    assert got == [signal.SIGINT]


def test_another_ctrl_c_skips_the_wait():
    relay = InterruptRelay(((signal.SIGINT, 0.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)))
    got: list[int] = []
    relay.attach(got.append)
    relay.interrupt()
    wait_for(lambda: got == [signal.SIGINT])
    relay.interrupt()
    wait_for(lambda: got == [signal.SIGINT, signal.SIGTERM], timeout=5)
    relay.interrupt()
    wait_for(lambda: len(got) == 3, timeout=5)
    relay.detach()


def test_sigint_is_forwarded_while_a_command_runs_and_stops_qlite_before():
    relay = InterruptRelay(((signal.SIGINT, 0.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)))
    got: list[int] = []
    with forwarding_sigint(relay):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises before this ends
        relay.attach(got.append)
        os.kill(os.getpid(), signal.SIGINT)
        wait_for(lambda: got == [signal.SIGINT])
        relay.detach()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- the agent's SIGNAL frame (VM qubes, preloaded disposables) --------------------------------------


@pytest.fixture
def agent():
    """The real guest agent, serving one connection as it does in a
    preloaded disposable; yields the host's end."""
    sockdir = short_tmpdir()
    path = sockdir / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qlite_guest.vmagent", "--connect", str(path)], env=GUEST.env(), stdin=subprocess.DEVNULL
    )
    try:
        srv.settimeout(30)
        conn, _ = srv.accept()
        conn.settimeout(None)
        hello = ch.Decoder().feed(conn.recv(1024))
        assert hello and hello[0][0] == ch.HELLO
        yield conn
        proc.wait(30)  # it serves one connection, then ends
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        srv.close()
        path.unlink(missing_ok=True)
        sockdir.rmdir()


def run_in_agent(conn, argv: list[str], relay: InterruptRelay, interrupt_after: float) -> tuple[int, float]:
    threading.Timer(interrupt_after, relay.interrupt).start()
    with open(os.devnull, "wb") as null:
        start = time.monotonic()
        code = exec_over(
            conn,
            "test",
            argv,
            Stdio(stdin=None, stdout=null, stderr=null, interrupts=relay),
            "root",
            "/",
            {"PATH": "/usr/bin:/bin"},
        )
    return code, time.monotonic() - start


def test_ctrl_c_reaches_a_command_in_the_agent_and_its_status_is_a_shells(agent):
    relay = InterruptRelay(((signal.SIGINT, 0.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)))
    code, took = run_in_agent(agent, ["sh", "-c", "sleep 30; exit 0"], relay, 1.0)
    assert code == 128 + signal.SIGINT and took < 10
    assert relay.sent == [signal.SIGINT]


def test_a_command_that_handles_sigint_exits_as_it_chooses(agent):
    relay = InterruptRelay(((signal.SIGINT, 0.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)))
    code, _ = run_in_agent(agent, ["sh", "-c", "trap 'exit 7' INT; sleep 30"], relay, 1.0)
    assert code == 7


def test_a_command_that_ignores_every_signal_is_killed_by_hanging_up(agent):
    relay = InterruptRelay(((signal.SIGINT, 0.0), (signal.SIGTERM, 0.3), (signal.SIGKILL, 0.3)))
    code, took = run_in_agent(agent, ["sh", "-c", "trap '' INT TERM; sleep 30"], relay, 1.0)
    assert code == 128 + signal.SIGKILL and took < 10
