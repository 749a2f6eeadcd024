"""How the TUI is reached and what it may import; the production asks
source against a stand-in for the daemon's admin socket; the production
command runner with a stand-in for qlite."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from qlite.errors import QliteError
from qlite.paths import Paths
from qlite.tui.asks import DaemonAsks, Question
from qlite.tui.runner import CliRunner, Intro
from qlite.tui.screens.run import RunRequest
from tests.conftest import REPO


def test_qlite_itself_never_imports_textual():
    code = (
        "import sys, qlite.cli, qlite.core.qubes, qlite.core.usage\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'textual' or m.startswith('qlite.tui')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_the_tui_installs_as_qlite_tui_and_not_as_tui(tmp_path):
    """The folder tui/ is qlite.tui; a package named tui would clash with
    any other of that name."""
    code = (
        "import importlib.util, qlite.tui.app\n"
        "print(importlib.util.find_spec('tui'), qlite.tui.app.QliteApp.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.stdout.split() == ["None", "qlite.tui.app"]


def test_qlite_tui_needs_a_terminal(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "qlite", "tui"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "QLITE_HOME": str(tmp_path)},
        timeout=60,
    )
    assert proc.returncode == 125
    assert proc.stderr == "qlite: error: qlite tui needs a terminal\n"


def test_run_requests_become_qlite_run_arguments():
    assert RunRequest(["bash"], terminal=True, qube="work").cli_args() == ["run", "-t", "work", "--", "bash"]
    assert RunRequest(["ls", "-l"], terminal=False).cli_args() == ["run", "--disposable", "--", "ls", "-l"]
    assert RunRequest(["sh"], terminal=True, dvm="dvm2").cli_args() == [
        "run",
        "--disposable",
        "--dvm",
        "dvm2",
        "-t",
        "--",
        "sh",
    ]


class FakeAdmin:
    """Holds the daemon lock and answers JSON lines on admin.sock as the
    broker does, recording each request."""

    def __init__(self, paths: Paths, replies):
        paths.ensure()
        self.requests: list[dict] = []
        self.replies = replies
        self.lock_fd = os.open(paths.daemon_lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(paths.admin_sock))
        self.server.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                request = json.loads(conn.makefile().readline())
                self.requests.append(request)
                conn.sendall(json.dumps(self.replies(request)).encode() + b"\n")

    def close(self) -> None:
        # shutdown() wakes the thread out of accept(); close() alone would
        # leave it there, and a signal would restart that accept() on the
        # same fd number after a later test's listener got it (see
        # tests/unit/test_guest_connecttcp.py::EchoServer).
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=10)
        self.server.close()
        os.close(self.lock_fd)


@pytest.fixture
def paths(tmp_path) -> Paths:
    return Paths(tmp_path / "home")


def test_daemon_asks_without_a_daemon_has_no_questions(paths):
    assert DaemonAsks(paths).pending() == []


def test_daemon_asks_lists_and_answers(paths):
    ask = {
        "id": 3,
        "source": "work",
        "service": "qubes.Filecopy",
        "argument": "",
        "target": "@default",
        "choices": ["vault", "personal"],
        "default_target": None,
        "seconds_left": 41,
    }

    def replies(request: dict) -> dict:
        if request["op"] == "asks":
            return {"ok": True, "asks": [ask]}
        if request["id"] != 3:
            return {"ok": False, "error": f"no pending question {request['id']} (answered, or timed out)"}
        return {"ok": True, "id": 3, "allow": request["allow"], "target": request["target"]}

    admin = FakeAdmin(paths, replies)
    try:
        asks = DaemonAsks(paths)
        assert asks.pending() == [
            Question(3, "work", "qubes.Filecopy", "", "@default", ("vault", "personal"), None, 41)
        ]
        asks.answer(3, True, "personal")
        with pytest.raises(QliteError, match="no pending question 4"):
            asks.answer(4, False, None)
    finally:
        admin.close()
    assert admin.requests == [
        {"op": "asks"},
        {"op": "answer", "id": 3, "allow": True, "target": "personal"},
        {"op": "answer", "id": 4, "allow": False, "target": None},
    ]


class Suspendable:
    """Stands in for the app: suspend() hands the terminal over (here: nothing to do)."""

    def suspend(self):
        return contextlib.nullcontext()


def script_runner(paths: Paths, code: int, keys: list[str]) -> CliRunner:
    """A CliRunner whose 'qlite' prints a line and exits CODE; its key
    presses are recorded in KEYS (what was on the screen at that moment)."""
    runner = CliRunner(paths, read_key=lambda: keys.append(sys.stdout.getvalue()))
    runner.argv0 = [sys.executable, "-c", f"import sys; print('output', flush=True); sys.exit({code})"]
    return runner


def test_a_command_in_a_terminal_stays_until_a_key(paths, capfd, monkeypatch):
    keys: list[str] = []
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    intro = Intro.for_qube("work", "blue", "ls -l")
    code = script_runner(paths, 3, keys).interactive(Suspendable(), ["run"], intro=intro, hold=True)
    assert code == 3
    out = sys.stdout.getvalue()
    # The title and the first line come before the command; the prompt after it, then one key.
    assert out.startswith("\x1b]0;[work] ls -l\x07" + intro.line + "\n")
    assert intro.line.startswith("\x1b[1;34m[work]\x1b[0m ls -l in work (label blue)")
    assert out.endswith("\x1b]0;qlite\x07")  # the title is given back, after the key
    assert keys == [out.removesuffix("\x1b]0;qlite\x07")]
    assert keys[0].endswith("\n[exited with 3: press any key to return to qlite] ")
    assert capfd.readouterr().out == "output\n"


def test_a_terminal_left_on_purpose_does_not_wait(paths, monkeypatch):
    keys: list[str] = []
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert script_runner(paths, 0, keys).interactive(Suspendable(), ["run"]) == 0
    assert keys == [] and sys.stdout.getvalue() == ""
    # qlite's own error (exit 125) waits even so: its one line would be hidden.
    assert script_runner(paths, 125, keys).interactive(Suspendable(), ["run"]) == 125
    assert len(keys) == 1


def test_no_color_leaves_the_intro_plain(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    intro = Intro.for_qube("vault", "black", "terminal", "exit the shell to return to qlite")
    assert intro.line == "[vault] terminal in vault (label black): exit the shell to return to qlite"
    # Control characters in a typed command do not reach the terminal.
    assert Intro.for_qube("work", "red", "echo \x1b]0;x\x07").title == "[work] echo ?]0;x?"
