"""The thin ``qlite`` client and the daemon's fork server (qlite.served).

The pure parts are table-driven. The rest runs a real fork server on a
temporary home, forked by a stand-in for the daemon, and the real client
in subprocesses; the commands it serves are this module's probe_main (no
podman needed) or the real CLI. Every wait is bounded, and every process
started here is stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qlite.paths import DEFAULT_HOME, Paths
from qlite.served import client, protocol
from qlite.served.server import RequestError, parse_request

REPO = Path(__file__).resolve().parents[2]
PROBE = "tests.unit.test_served:probe_main"
WAIT_S = 30

# The client, unable to fall back to the CLI in its own process: whatever
# these tests see was served.
CLIENT = "import sys; sys.modules['qlite.cli'] = None; from qlite.served.client import main; raise SystemExit(main())"

# A stand-in for qlite daemon: forks the fork server, and stops it on SIGTERM.
DAEMON = """
import signal, sys
from qlite.paths import Paths
from qlite.served import server
paths = Paths.from_env()
paths.ensure()
pid = server.start(paths, entry=sys.argv[1])
def stop(*_):
    server.stop(paths, pid)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(pid, flush=True)
while True:
    signal.pause()
"""


def probe_main(argv: list[str]) -> int:
    """What the tests' fork server runs for a command."""
    what, *args = argv
    if what == "exit":
        sys.stdout.write("to stdout\n")
        sys.stderr.write("to stderr\n")
        return int(args[0])
    if what == "cat":
        sys.stdout.write(Path(args[0]).read_text())
        return 0
    if what == "env":
        for key in args:
            sys.stdout.write(f"{key}={os.environ.get(key, '<unset>')}\n")
        return 0
    if what == "umask":
        sys.stdout.write(f"{os.umask(0):03o}\n")
        return 0
    if what == "stdin":
        sys.stdout.write(sys.stdin.read().upper())
        return 0
    if what == "wait":
        sys.stdout.write("waiting\n")
        sys.stdout.flush()
        time.sleep(WAIT_S)
        return 3
    if what == "cleanup":  # as a disposable does: cleans up on SIGTERM, exits 143

        class Terminated(Exception):
            pass

        def terminated(_signum, _frame):
            raise Terminated

        signal.signal(signal.SIGTERM, terminated)
        sys.stdout.write("waiting\n")
        sys.stdout.flush()
        try:
            time.sleep(WAIT_S)
        except Terminated:
            sys.stderr.write("cleaned up\n")
            return 128 + signal.SIGTERM
        return 3
    if what == "usage":
        raise SystemExit(125)
    raise AssertionError(f"no probe {what}")


# -- the protocol -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"exit": 0},
        {"exit": 130},
        {"signal": 2},
        {"error": "only root"},
        {"argv": ["run", "work", "--", "echo", "é", "\udcff"], "env": {"QLITE_HOME": "/x"}, "umask": 18},
    ],
)
def test_messages_survive_a_round_trip(message):
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert protocol.decode(line[:-1]) == message


@pytest.mark.parametrize("line", [b"", b"[1]", b'"x"', b"{", b'{"exit": 1} x', b"\xff", b"{'exit': 1}"])
def test_what_is_not_a_message(line):
    with pytest.raises(ValueError):
        protocol.decode(line)


GOOD = {"argv": ["ls"], "env": {"QLITE_HOME": "/h", "TERM": "xterm"}, "umask": 0o022}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({}, None),
        ({"argv": []}, "argv"),
        ({"argv": "ls"}, "argv"),
        ({"argv": ["ls", 1]}, "argv"),
        ({"env": []}, "env"),
        ({"env": {"QLITE_HOME": 1}}, "env"),
        ({"env": {"PATH": "/evil"}}, "does not pass"),
        ({"env": {"LD_PRELOAD": "/evil.so"}}, "does not pass"),
        ({"argv": ["ls\0x"]}, "NUL"),
        ({"umask": -1}, "umask"),
        ({"umask": 0o1000}, "umask"),
        ({"umask": True}, "umask"),
        ({"umask": "022"}, "umask"),
        ({"cwd": "/"}, "unknown keys"),
    ],
)
def test_requests_are_validated(change, error):
    line = protocol.encode({**GOOD, **change})[:-1]
    if error is None:
        request = parse_request(line)
        assert (request.argv, request.env, request.umask) == (GOOD["argv"], GOOD["env"], 0o022)
    else:
        with pytest.raises(RequestError, match=error):
            parse_request(line)


def test_a_request_that_is_not_json_is_refused():
    with pytest.raises(RequestError, match="not a JSON object"):
        parse_request(b"argv=ls")


@pytest.mark.parametrize(
    ("argv", "served"),
    [
        ([], False),
        (["-h"], False),
        (["--help"], False),
        (["--version"], False),
        (["doctor"], False),
        (["setup", "-q"], False),
        (["daemon", "stop"], False),
        (["service", "start"], False),
        (["tui"], False),
        (["ls"], True),
        (["ls", "--help"], True),  # argparse's help is served like any output
        (["run", "work", "--", "daemon"], True),
        (["prefs", "--global"], True),
        (["bogus"], True),  # the served CLI says what is wrong, as in-process
    ],
)
def test_which_commands_are_served(argv, served):
    assert client.served(argv) is served


def test_only_qlites_part_of_the_environment_is_passed():
    environ = {
        "QLITE_HOME": "/h",
        "QLITE_ASK_TIMEOUT": "5",
        "DISPLAY": ":0",
        "XAUTHORITY": "/x",
        "WAYLAND_DISPLAY": "w",
        "TERM": "xterm",
        "NO_COLOR": "1",
        "FORCE_COLOR": "1",
        "COLUMNS": "80",
        "LINES": "24",
        "PATH": "/bin",
        "HOME": "/root",
        "LD_PRELOAD": "x.so",
        "PYTHONPATH": "/p",
        "XQLITE_HOME": "no",
    }
    passed = protocol.served_env(environ)
    assert sorted(passed) == sorted(
        k for k in environ if k not in ("PATH", "HOME", "LD_PRELOAD", "PYTHONPATH", "XQLITE_HOME")
    )


@pytest.mark.parametrize("home", [None, "", "/var/lib/qlite", "/tmp/some home"])
def test_the_client_finds_the_socket_and_log_where_paths_puts_them(monkeypatch, home):
    environ = {} if home is None else {"QLITE_HOME": home}
    expected = Paths(Path(home or DEFAULT_HOME))
    assert client.socket_path(client.home_dir(environ)) == str(expected.cli_sock)
    assert client.daemon_log(client.home_dir(environ)) == str(expected.daemon_log)


def test_the_client_imports_almost_nothing():
    code = (
        "import sys; before = set(sys.modules); import qlite.served.client; print(*sorted(set(sys.modules) - before))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    imported = set(done.stdout.split())
    assert imported <= {
        "qlite",
        "qlite.served",
        "qlite.served.client",
        "qlite.served.protocol",
        "_json",
        "_signal",
        "_socket",
        "_struct",
        "__future__",
    }, imported


# -- a real fork server -------------------------------------------------------------------


class Served:
    """A temporary home with a stand-in daemon and its fork server."""

    def __init__(self, entry: str = PROBE) -> None:
        base = tempfile.mkdtemp(prefix="qlite-served-", dir="/tmp")
        os.chmod(base, 0o711)  # the non-root test's client must reach the socket
        self.base = Path(base)
        self.paths = Paths(self.base / "home")
        self.env = {**os.environ, "QLITE_HOME": str(self.paths.home)}
        self.env.pop("QLITE_SHARE", None)
        self.daemon = subprocess.Popen(
            [sys.executable, "-c", DAEMON, entry],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.server = int(self.daemon.stdout.readline())
        deadline = time.monotonic() + WAIT_S
        while not self.listening():
            assert time.monotonic() < deadline, "the fork server did not listen"
            assert self.daemon.poll() is None, "the stand-in daemon died"
            time.sleep(0.05)

    def listening(self) -> bool:
        return self.paths.cli_sock.exists()

    def popen(self, *argv: str, cwd: Path | None = None, env: dict | None = None, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            [sys.executable, "-c", CLIENT, *argv],
            cwd=cwd or REPO,
            env={**self.env, "PYTHONPATH": str(REPO), **(env or {})},
            text=True,
            **kwargs,
        )

    def run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        input_ = kwargs.pop("input", None)
        proc = self.popen(*argv, stdin=subprocess.PIPE if input_ is not None else subprocess.DEVNULL, **kwargs)
        out, err = proc.communicate(input_, timeout=WAIT_S)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def children(self) -> list[int]:
        """The fork server's workers, from /proc."""
        try:
            text = Path(f"/proc/{self.server}/task/{self.server}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def close(self) -> None:
        if self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=WAIT_S)
        self.daemon.stdout.close()
        wait_gone(self.server)
        shutil.rmtree(self.base, ignore_errors=True)


def wait_gone(pid: int, timeout: float = WAIT_S) -> bool:
    """Whether PID is gone (or a zombie) within TIMEOUT; SIGKILL if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


@pytest.fixture(scope="module")
def served():
    s = Served()
    try:
        yield s
    finally:
        s.close()


def test_the_exit_code_and_output_reach_the_client(served):
    for code in (0, 1, 42, 130):
        done = served.run("exit", str(code))
        assert (done.returncode, done.stdout, done.stderr) == (code, "to stdout\n", "to stderr\n")


def test_a_usage_error_exits_125(served):
    assert served.run("usage").returncode == 125


def test_stdin_is_the_clients(served):
    done = served.run("stdin", input="hello\n")
    assert (done.returncode, done.stdout) == (0, "HELLO\n")


def test_a_relative_path_is_the_clients_working_directory(served, tmp_path):
    (tmp_path / "note.txt").write_text("in the client's directory\n")
    done = served.run("cat", "note.txt", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "in the client's directory\n"), done.stderr


def test_the_command_has_the_clients_environment_and_umask(served):
    env = {"QLITE_PROBE": "from the client", "DISPLAY": ":7"}
    done = served.run("env", "QLITE_PROBE", "DISPLAY", "QLITE_UNSET", env={**env, "QLITE_UNSET": ""})
    assert done.stdout == "QLITE_PROBE=from the client\nDISPLAY=:7\nQLITE_UNSET=\n"
    # A key the client does not have is not the daemon's either.
    served_env_without = {k: v for k, v in served.env.items() if k != "TERM"}
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, "env", "TERM"],
        env={**served_env_without, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=REPO,
    )
    assert proc.stdout == "TERM=<unset>\n"
    done = served.run("umask", preexec_fn=lambda: os.umask(0o027))
    assert done.stdout == "027\n"


def test_a_closed_stdout_is_dev_null_not_the_daemons(served):
    script = "import os; os.close(1); " + CLIENT  # the client's own fd 1, closed before it runs
    done = subprocess.run(
        [sys.executable, "-c", script, "exit", "4"],
        env={**served.env, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=REPO,
    )
    assert (done.returncode, done.stdout, done.stderr) == (4, "", "to stderr\n")
    log = served.paths.daemon_log
    assert "to stdout" not in (log.read_text() if log.exists() else "")


def test_a_forwarded_sigint_interrupts_the_command(served):
    proc = served.popen("wait", stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 130, err
        assert "interrupted" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)


def test_a_forwarded_sigterm_ends_the_command_as_it_would_in_process(served):
    proc = served.popen("wait", stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 128 + signal.SIGTERM  # killed by it, as the server saw
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)


def test_a_client_that_dies_takes_its_command_with_it(served):
    proc = served.popen("wait", stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == "waiting\n"
        workers = served.children()
        assert len(workers) == 1, workers
        proc.kill()
        proc.wait(timeout=WAIT_S)
        assert wait_gone(workers[0]), "the worker outlived its client"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)


def test_commands_run_side_by_side(served):
    procs = [served.popen("wait", stdin=subprocess.DEVNULL) for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "waiting\n"
        done = served.run("exit", "5")  # not held up by the three waiting
        assert done.returncode == 5
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        assert [proc.wait(timeout=WAIT_S) for proc in procs] == [130, 130, 130]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT_S)


def test_a_peer_that_is_not_root_is_refused(served):
    # Past the modes, to the server's own check.
    run_mode = served.paths.run_dir.stat().st_mode & 0o777
    os.chmod(served.paths.run_dir, 0o711)
    os.chmod(served.paths.cli_sock, 0o666)
    try:
        done = served.run("exit", "0", preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    finally:
        os.chmod(served.paths.cli_sock, 0o600)
        os.chmod(served.paths.run_dir, run_mode)
    assert done.returncode == 125, done.stderr
    assert done.stderr == "qlite: error: only root may run qlite commands through the daemon\n"
    assert done.stdout == ""


def test_a_malformed_request_gets_one_line_and_runs_nothing(served):
    import socket

    for fds in ([0, 1, 2], []):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(WAIT_S)
            s.connect(str(served.paths.cli_sock))
            socket.send_fds(s, [protocol.encode({"argv": ["exit", "0"]})], fds)
            reply = s.makefile("rb").read()
        assert protocol.decode(reply.strip()) == {"error": "malformed request: it must pass 4 file descriptors"}
    assert served.children() == []


def test_without_a_daemon_the_command_runs_in_process(tmp_path):
    """No socket, or a stale one: the real CLI in the client's process."""
    env = {**os.environ, "QLITE_HOME": str(tmp_path / "home")}
    qlite = [sys.executable, "-c", "from qlite.served.client import main; raise SystemExit(main())"]
    done = subprocess.run([*qlite, "prefs", "--global"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "default_netvm" in done.stdout, done.stderr
    import socket

    (tmp_path / "home" / "run").mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(Paths(tmp_path / "home").cli_sock))  # bound, never listening: refused
    done = subprocess.run([*qlite, "prefs", "--global"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "default_netvm" in done.stdout, done.stderr


def test_the_daemon_killed_mid_command_gives_a_clear_error():
    s = Served()
    try:
        proc = s.popen("wait", stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout.readline() == "waiting\n"
            workers = s.children()
            os.kill(s.daemon.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT_S)
        assert proc.returncode == 125
        assert err == (
            f"qlite: the qlite daemon stopped while serving this command; see {s.paths.home}/log/daemon.log\n"
        )
        assert wait_gone(s.server), "the fork server outlived the daemon"
        assert all(wait_gone(pid) for pid in workers), "a worker outlived the daemon"
    finally:
        s.close()


def test_a_command_that_cleans_up_as_the_daemon_dies_says_both():
    s = Served()
    try:
        proc = s.popen("cleanup", stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout.readline() == "waiting\n"
            os.kill(s.daemon.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT_S)
        assert proc.returncode == 143
        assert err == (
            "cleaned up\n"
            "qlite: the qlite daemon stopped while serving this command; "
            f"see {s.paths.home}/log/daemon.log\n"
        )
    finally:
        s.close()


def test_the_real_cli_is_served():
    s = Served(entry="qlite.cli:main")
    try:
        done = s.run("prefs", "--global")
        assert done.returncode == 0 and "default_netvm" in done.stdout, done.stderr
        done = s.run("prefs", "no-such-qube")
        assert (done.returncode, done.stderr) == (125, "qlite: error: no such qube: 'no-such-qube'\n")
        done = s.run("bogus")
        assert done.returncode == 125 and "invalid choice: 'bogus'" in done.stderr
    finally:
        s.close()
    assert not s.paths.cli_sock.exists()
