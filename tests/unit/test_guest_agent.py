"""The container qubes' guest agent, in both its forms: the C one
(guest-src/qlite-agent.c, built as template builds build it) and the
Python one (qlite_guest.vmagent). Each runs here on the host as
``--serve SOCK`` against a listening socket of the test's, which speaks
the channel frames to it as the daemon does; every case runs against both,
so that they are held to one behaviour."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlite.agent import channel as ch
from qlite.agent import frames
from qlite.core import guest
from qlite.errors import QliteError

from .guest_helpers import GUEST, REPO, short_tmpdir

TIMEOUT = 10.0


@pytest.fixture(scope="session")
def c_agent(tmp_path_factory) -> Path:
    """The C agent, compiled once with the template builds' command line."""
    target = tmp_path_factory.mktemp("agent") / "qlite-agent"
    try:
        guest.compile_program(guest.source_dir(REPO / "guest") / "qlite-agent.c", target)
    except QliteError as exc:
        pytest.fail(f"the C agent does not build (gcc and libc6-dev are qlite dependencies): {exc}")
    return target


def agent_command(kind: str, c_agent: Path, sock: Path) -> tuple[list[str], dict[str, str] | None]:
    if kind == "c":
        return [str(c_agent), "--serve", str(sock)], None
    return [sys.executable, "-m", "qlite_guest.vmagent", "--serve", str(sock)], GUEST.env()


@dataclass
class Result:
    stdout: bytes = b""
    stderr: bytes = b""
    code: int | None = None
    error: str | None = None
    kinds: list[int] = field(default_factory=list)
    frames: list[tuple[int, int]] = field(default_factory=list)  # (type, payload length)


class Host:
    """The daemon's end of one agent's link: frames in and out, per channel."""

    def __init__(self, srv: socket.socket):
        self.srv = srv
        self.conn: socket.socket | None = None
        self.lock = threading.Lock()
        self.accept()

    def accept(self, strays: bool = False) -> None:
        """Take the agent's next connection; it greets first (unless STRAYS:
        frames of another channel may come before)."""
        self.srv.settimeout(TIMEOUT)
        self.conn, _ = self.srv.accept()
        self.decoder = ch.Decoder()
        self.backlog: list[tuple[int, int, bytes]] = []
        self.pending: dict[int, list[tuple[int, bytes]]] = {}
        kind, channel, payload = self.recv_any()
        while strays and channel != 0:
            self.pending.setdefault(channel, []).append((kind, payload))
            kind, channel, payload = self.recv_any()
        assert (kind, channel) == (ch.HELLO, 0)
        assert ch.decode_json(payload) == {"version": ch.VERSION}

    def drop(self) -> None:
        assert self.conn is not None
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self.conn = None

    def send(self, kind: int, channel: int, payload: bytes = b"") -> None:
        assert self.conn is not None
        with self.lock:
            self.conn.sendall(ch.encode(kind, channel, payload))

    def send_json(self, kind: int, channel: int, obj: dict) -> None:
        self.send(kind, channel, json.dumps(obj).encode())

    def recv_any(self) -> tuple[int, int, bytes]:
        assert self.conn is not None
        frame = frames.recv_frame(self.conn, self.decoder, self.backlog, time.monotonic() + TIMEOUT)
        assert frame is not None, "the agent closed the link"
        return frame

    def recv(self, channel: int) -> tuple[int, bytes]:
        """The next frame on CHANNEL (frames of others are kept for them)."""
        while not self.pending.get(channel):
            kind, chan, payload = self.recv_any()
            self.pending.setdefault(chan, []).append((kind, payload))
        return self.pending[channel].pop(0)

    def open(self, channel: int, argv: list[str], **req) -> None:
        self.send_json(ch.OPEN, channel, {"kind": "exec", "argv": argv, **req})

    def until(self, channel: int, text: bytes) -> Result:
        """Frames on CHANNEL until its stdout holds TEXT."""
        res = Result()
        while text not in res.stdout:
            self._take(res, *self.recv(channel))
            assert res.code is None and res.error is None, res
        return res

    def finish(self, channel: int, res: Result | None = None) -> Result:
        """Frames on CHANNEL until its EXIT or ERROR."""
        res = res or Result()
        while res.code is None and res.error is None:
            self._take(res, *self.recv(channel))
        return res

    def _take(self, res: Result, kind: int, payload: bytes) -> None:
        res.kinds.append(kind)
        res.frames.append((kind, len(payload)))
        if kind == ch.STDOUT:
            res.stdout += payload
        elif kind == ch.STDERR:
            res.stderr += payload
        elif kind == ch.EXIT:
            res.code = ch.decode_json(payload)["code"]
        elif kind == ch.ERROR:
            res.error = ch.decode_json(payload)["message"]
        else:
            raise AssertionError(f"unexpected frame {kind:#x}")

    def run(self, channel: int, argv: list[str], stdin: bytes | None = b"", **req) -> Result:
        self.open(channel, argv, **req)
        if stdin is not None:
            if stdin:
                self.send(ch.STDIN, channel, stdin)
            self.send(ch.STDIN, channel)
        return self.finish(channel)

    def ping(self, payload: bytes = b"still there?") -> None:
        self.send(ch.PING, 0, payload)
        assert self.recv(0) == (ch.PONG, payload)


@dataclass
class Agent:
    kind: str
    proc: subprocess.Popen
    host: Host


def ignore_job_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


@pytest.fixture(params=["c", "python"])
def agent(request, c_agent):
    d = short_tmpdir()
    sock = d / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))
    srv.listen(4)
    cmd, env = agent_command(request.param, c_agent, sock)
    # Started as a shell's background job under nohup starts it: SIGINT,
    # SIGQUIT and SIGHUP ignored. The commands it runs must get them anyway.
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=ignore_job_signals)
    try:
        yield Agent(request.param, proc, Host(srv))
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


def lines(data: bytes) -> list[str]:
    return data.decode().replace("\r\n", "\n").splitlines()


def gone(pid: int) -> bool:
    """Whether process group PID has no process left, within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


# -- commands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, stdin, stdout, stderr, code",
    [
        (["sh", "-c", "echo out; echo err >&2; exit 3"], b"", b"out\n", b"err\n", 3),
        (["cat"], b"hello\nworld", b"hello\nworld", b"", 0),
        (["sh", "-c", "read a; read b; echo $b $a"], b"one\ntwo\n", b"two one\n", b"", 0),
        (["sh", "-c", "kill -TERM $$"], b"", b"", b"", 128 + signal.SIGTERM),
        (["sh", "-c", "kill -KILL $$"], b"", b"", b"", 128 + signal.SIGKILL),
        (["no-such-command-qlite"], b"", b"", b"no-such-command-qlite: command not found\n", 127),
        (["printf", "%s", "\u00e9\U0001f600"], b"", "\u00e9\U0001f600".encode(), b"", 0),
        (["sh", "-c", "head -c 300000 /dev/zero"], b"", b"\0" * 300000, b"", 0),
    ],
    ids=["out-err-exit", "cat", "read", "killed", "kill-9", "not-found", "unicode", "big-output"],
)
def test_a_command_runs_with_its_stdio_and_exit_code(agent, argv, stdin, stdout, stderr, code):
    res = agent.host.run(2, argv, stdin)
    assert (res.stdout, res.stderr, res.code, res.error) == (stdout, stderr, code, None)
    assert res.kinds[-1] == ch.EXIT and res.kinds.count(ch.EXIT) == 1
    # Each stream ends with one empty frame, its last, before the EXIT.
    for kind in (ch.STDOUT, ch.STDERR):
        sizes = [n for k, n in res.frames if k == kind]
        assert sizes[-1] == 0 and 0 not in sizes[:-1], res.frames


def test_stdin_larger_than_any_buffer_goes_through(agent):
    """Megabytes for a command that reads them: the link keeps flowing both
    ways (the daemon reads the agent's frames while it writes its own)."""
    data = os.urandom(3 * 1024 * 1024)
    host = agent.host
    host.open(2, ["sh", "-c", "cat | md5sum"])

    def feed() -> None:
        for chunk in ch.chunks(data):
            host.send(ch.STDIN, 2, chunk)
        host.send(ch.STDIN, 2)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    res = host.finish(2)
    t.join(TIMEOUT)
    assert res.code == 0 and res.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_frame_reaches_the_commands_process_group(agent, sig):
    host = agent.host
    host.open(2, ["sh", "-c", "echo ready; exec sleep 30"])
    res = host.until(2, b"ready\n")
    host.send_json(ch.SIGNAL, 2, {"signal": int(sig)})
    assert host.finish(2, res).code == 128 + sig


def test_only_the_forwarded_signals_are_sent(agent):
    host = agent.host
    host.open(2, ["sh", "-c", "echo ready; exec sleep 30"])
    res = host.until(2, b"ready\n")
    for bad in ({"signal": int(signal.SIGSTOP)}, {"signal": True}, {"signal": "15"}, {}, []):
        host.send_json(ch.SIGNAL, 2, bad)  # type: ignore[arg-type]
    host.send(ch.SIGNAL, 2, b"{not json")
    host.ping()
    host.send_json(ch.SIGNAL, 2, {"signal": int(signal.SIGQUIT)})
    assert host.finish(2, res).code == 128 + signal.SIGQUIT


def test_close_kills_the_session(agent):
    host = agent.host
    host.open(2, ["sh", "-c", "echo $$; exec sleep 30"])
    res = host.until(2, b"\n")
    pid = int(res.stdout)
    host.send(ch.CLOSE, 2)
    assert host.finish(2, res).code == 128 + signal.SIGKILL
    assert gone(pid)


def test_the_user_env_and_cwd_of_a_command(agent):
    script = 'id -u; id -G; echo "$HOME|$USER|$LOGNAME|$PATH|$LANG|$FOO"; pwd'
    res = agent.host.run(2, ["sh", "-c", script], user="nobody", cwd="/tmp", env={"FOO": "bar", "LANG": "C"})
    assert res.code == 0, res
    std = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert lines(res.stdout) == ["65534", "65534", f"/nonexistent|nobody|nobody|{std}|C|bar", "/tmp"]
    res = agent.host.run(4, ["sh", "-c", 'echo "$HOME|$USER|$TERM"; pwd'], cwd="/no/such/dir")
    assert lines(res.stdout) == ["/root|root|", "/"]
    res = agent.host.run(6, ["env"], env={"PATH": "/bin"})
    assert "PATH=/bin" in lines(res.stdout)


def test_the_commands_path_is_searched(agent, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "qlite-test-tool").write_text("#!/bin/sh\necho found $0\n")
    (bindir / "qlite-test-tool").chmod(0o755)
    res = agent.host.run(2, ["qlite-test-tool"], env={"PATH": f"/nonexistent:{bindir}"})
    assert (res.stdout, res.code) == (f"found {bindir}/qlite-test-tool\n".encode(), 0)


def test_an_unknown_user_is_an_error(agent):
    res = agent.host.run(2, ["true"], stdin=None, user="no-such-user-qlite")
    assert res.error == "true: no user 'no-such-user-qlite' in this qube"
    agent.host.ping()


def test_a_terminal_has_the_size_given_and_follows_resizes(agent):
    host = agent.host
    host.open(2, ["sh", "-c", "stty size; echo $TERM; read x; stty size"], tty=True, rows=12, cols=34)
    res = host.until(2, b"xterm-256color")
    host.send_json(ch.RESIZE, 2, {"rows": 56, "cols": 78})
    host.send(ch.STDIN, 2, b"go\n")
    res = host.finish(2, res)
    assert res.code == 0 and res.stderr == b""
    assert lines(res.stdout) == ["12 34", "xterm-256color", "go", "56 78"]
    # A terminal's session ends with both streams' ends, then its exit.
    assert res.kinds[-3:] == [ch.STDOUT, ch.STDERR, ch.EXIT]


def test_a_terminal_is_the_commands_controlling_terminal(agent):
    res = agent.host.run(2, ["sh", "-c", "tty; ps -o tty= -p $$ >/dev/null; exit 5"], stdin=None, tty=True)
    assert res.code == 5 and lines(res.stdout)[0].startswith("/dev/pts/"), res


def test_two_sessions_at_once(agent):
    host = agent.host
    host.open(2, ["cat"])
    host.open(4, ["sh", "-c", "cat; exit 4"])
    host.send(ch.STDIN, 4, b"four-a ")
    host.send(ch.STDIN, 2, b"two-a ")
    host.send(ch.STDIN, 4, b"four-b")
    host.send(ch.STDIN, 2, b"two-b")
    host.send(ch.STDIN, 2)
    two = host.finish(2)
    host.send(ch.STDIN, 4)
    four = host.finish(4)
    assert (two.stdout, two.code) == (b"two-a two-b", 0)
    assert (four.stdout, four.code) == (b"four-a four-b", 4)


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps({"kind": "exec", "argv": "true"}),
        json.dumps({"kind": "exec", "argv": []}),
        json.dumps({"kind": "exec", "argv": ["true", 1]}),
        json.dumps({"kind": "exec"}),
        json.dumps({"argv": ["true"], "rows": 0, "cols": 80}),
        json.dumps({"argv": ["true"], "rows": 24}),
        json.dumps({"argv": ["true"], "rows": 24, "cols": 65536}),
        json.dumps({"argv": ["true"], "rows": 24.0, "cols": 80}),
        json.dumps({"argv": ["true"], "rows": True, "cols": 80}),
        json.dumps({"argv": ["true"], "user": 5}),
        json.dumps({"argv": ["true"], "cwd": None}),
        json.dumps({"argv": ["true"], "env": {"A": 1}}),
        json.dumps({"argv": ["true"], "env": ["A=1"]}),
        json.dumps({"argv": ["a\0b"]}),
        json.dumps({"argv": ["true"], "env": {"A": "x\0y"}}),
        '{"argv": ["true"]',
        '{"argv": ["true"]} x',
        '{"argv": ["tr\\x"]}',
        '{"argv": ["\t"]}',
        "[1]",
        "",
        b"\xff",
    ],
)
def test_a_malformed_open_is_an_error_and_the_agent_serves_on(agent, payload):
    host = agent.host
    host.send(ch.OPEN, 2, payload if isinstance(payload, bytes) else payload.encode())
    kind, body = host.recv(2)
    assert kind == ch.ERROR, body
    message = ch.decode_json(body)["message"]
    assert message and "\n" not in message
    host.ping()
    assert host.run(4, ["sh", "-c", "exit 9"]).code == 9


def test_unknown_keys_and_repeated_ones(agent):
    """Unknown members are ignored, whatever they hold; of a repeated one the last counts."""
    payload = (
        '{"kind":"exec","x":{"y":[1,2.5e3,null,true,false,{}]},"argv":["false"],'
        '"argv":["sh","-c","echo $A $B; exit 3"],"env":{"A":"1","A":"\\u0032"},"env":{"A":"\\ud83d\\ude00","B":"\\/"},'
        '"tty":false}'
    )
    host = agent.host
    host.send(ch.OPEN, 2, payload.encode())
    host.send(ch.STDIN, 2)
    res = host.finish(2)
    assert (res.stdout, res.code) == ("\U0001f600 /\n".encode(), 3)


def test_ping_is_answered_with_the_same_payload(agent):
    agent.host.ping(b"")
    agent.host.ping(os.urandom(1000))
    agent.host.send(ch.PING, 7, b"x")
    assert agent.host.recv(7) == (ch.PONG, b"x")


def test_frames_for_no_session_are_ignored(agent):
    host = agent.host
    for kind in (ch.STDIN, ch.SIGNAL, ch.RESIZE, ch.CLOSE, ch.DATA, ch.PONG):
        host.send(kind, 40, b'{"signal": 15, "rows": 1, "cols": 1}')
    host.ping()


# -- the link ------------------------------------------------------------------------------------


def test_when_the_link_ends_its_commands_are_killed_and_the_agent_connects_again(agent):
    host = agent.host
    host.open(2, ["sh", "-c", "echo $$; exec sleep 30"])
    pid = int(host.until(2, b"\n").stdout)
    host.drop()
    # The Python agent's session thread can send the killed command's EXIT
    # on the new link (the new socket has the old one's fd number): the
    # daemon, after a restart, could take it for a new session's on the
    # same channel. The C agent ends its sessions before it reconnects.
    python = agent.kind == "python"
    host.accept(strays=python)  # a new HELLO
    assert gone(pid)
    host.ping()
    channel = 4 if python else 2
    res = host.run(channel, ["echo", "again"])
    assert (res.stdout, res.code) == (b"again\n", 0), res
    if not python:
        host.ping()
        assert not any(host.pending.values()), host.pending


@pytest.mark.parametrize("junk", [bytes([0x42]) + bytes(8), ch.HEADER.pack(ch.STDIN, 2, ch.MAX_PAYLOAD + 1)])
def test_a_malformed_frame_ends_the_link_for_the_c_agent(agent, junk):
    """The C agent drops the link on a frame it cannot read (and connects
    again); the Python one starts its decoder afresh on the same link."""
    host = agent.host
    assert host.conn is not None
    host.conn.sendall(junk)
    if agent.kind == "c":
        host.conn.settimeout(TIMEOUT)
        assert host.conn.recv(100) == b""
        host.drop()
        host.accept()
    else:
        time.sleep(0.3)  # what arrives in the same read as the bad frame is lost with it
    host.ping()


# -- the C agent alone ----------------------------------------------------------------------------


@pytest.fixture
def c_host(c_agent):
    d = short_tmpdir()
    sock = d / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))
    srv.listen(4)
    proc = subprocess.Popen([str(c_agent), "--serve", str(sock)], stdin=subprocess.DEVNULL)
    try:
        yield Host(srv)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


def test_the_c_agent_runs_64_commands_at_once_and_refuses_more(c_host):
    for i in range(64):
        c_host.open(2 + 2 * i, ["cat"])
    c_host.open(1000, ["true"])
    kind, body = c_host.recv(1000)
    assert kind == ch.ERROR and "64" in ch.decode_json(body)["message"]
    for i in range(64):
        c_host.send(ch.STDIN, 2 + 2 * i, b"%d" % i)
        c_host.send(ch.STDIN, 2 + 2 * i)
    for i in range(64):
        res = c_host.finish(2 + 2 * i)
        assert (res.stdout, res.code) == (b"%d" % i, 0)
    assert c_host.run(1000, ["true"]).code == 0


def test_the_c_agent_retries_until_the_socket_is_there(c_agent):
    d = short_tmpdir()
    sock = d / "agent.sock"
    proc = subprocess.Popen([str(c_agent), "--serve", str(sock)], stdin=subprocess.DEVNULL)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        time.sleep(0.3)
        assert proc.poll() is None
        srv.bind(str(sock))
        srv.listen(1)
        Host(srv).ping()  # within its 1 s backoff
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("args", [[], ["--serve"], ["--connect", "/x"], ["--serve", "/" + "x" * 200]])
def test_the_c_agent_refuses_a_bad_command_line(c_agent, args):
    done = subprocess.run([str(c_agent), *args], capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 2 and done.stderr


# A request as the host could send one: known members with values of every
# JSON type (and good ones), unknown members, any nesting.
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
MEMBERS = {
    "argv": st.just(["true"]) | st.lists(st.text(max_size=3) | JSON_ANY, max_size=3) | JSON_ANY,
    "user": st.just("root") | JSON_ANY,
    "cwd": st.sampled_from(["/", "/tmp", "/no/such"]) | JSON_ANY,
    "env": st.dictionaries(st.text(max_size=4), st.text(max_size=4) | JSON_ANY, max_size=3) | JSON_ANY,
    "tty": JSON_ANY,
    "rows": st.integers(min_value=-2, max_value=70000) | JSON_ANY,
    "cols": st.integers(min_value=-2, max_value=70000) | JSON_ANY,
    "kind": JSON_ANY,
    "other": JSON_ANY,
}
REQUESTS = st.fixed_dictionaries({}, optional=MEMBERS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=REQUESTS)
def test_the_c_agent_accepts_exactly_the_requests_the_python_one_does(c_host, req):
    """Where the shared validation refuses a request, so does the C agent;
    one it passes (and that would run `true` as root) runs."""
    try:
        ok = ch.validate_exec(req)
    except ch.ChannelError:
        ok = None
    runnable = (
        ok is not None
        and ok["argv"] == ["true"]
        and ok["user"] == "root"
        and "\0" not in ok["cwd"]
        and all("\0" not in k + v and "=" not in k for k, v in ok["env"].items())
        and not ok["tty"]  # a terminal per example would be slow, not different
    )
    if ok is not None and not runnable:
        return  # a command of hypothesis' own is not run
    c_host.send(ch.OPEN, 2, json.dumps(req).encode())
    c_host.send(ch.STDIN, 2)
    res = c_host.finish(2)
    if ok is None:
        assert res.error is not None, (req, res)
    else:
        assert (res.error, res.code) == (None, 0), (req, res)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_c_agent_survives_any_open_payload(c_host, data):
    """Bytes cut from, flipped in or added to a good request: an ERROR
    whenever Python's JSON reading or validation refuses them."""
    good = json.dumps({"kind": "exec", "argv": ["true"], "env": {"A": "\u00e9"}, "rows": 2, "cols": 3}).encode()
    payload = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload)))
        op = data.draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and pos < len(payload):
            payload[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del payload[pos : pos + data.draw(st.integers(1, 8))]
        else:
            payload[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        ch.validate_exec(ch.decode_json(bytes(payload)))
    except ch.ChannelError:
        c_host.send(ch.OPEN, 2, bytes(payload))
        kind, _ = c_host.recv(2)
        assert kind == ch.ERROR, bytes(payload)
    c_host.ping()


# -- RPC services: the C agent does the dispatcher's work itself -----------------------------

DISPATCH_ARGS = [
    ("my.Svc", "arg"),
    ("my.Svc", "other"),
    ("my.Svc",),
    ("no.Such", "arg"),
    ("no.Such",),
    ("../etc/my.Svc",),
    ("a/b",),
    ("",),
    (".",),
    ("..",),
    ("x" * 65,),
    ("x" * 64,),
    ("my.Svc", "a/b"),
    ("my.Svc", "a b"),
    ("my.Svc", "../../x"),
    ("my.Svc", "x" * 257),
    ("my.Svc", "a", "b"),
    ("my.Sv*",),
    ("my.Svc", "é"),
    (),
]


@pytest.fixture
def rpc_dirs(tmp_path):
    run, local, etc = (tmp_path / n for n in ("run", "local", "etc"))
    for d in (run, local, etc):
        d.mkdir()
    for path, mode in ((run / "my.Svc", 0o755), (etc / "my.Svc+arg", 0o755), (local / "my.Svc+other", 0o644)):
        path.write_text(f'#!/bin/sh\necho {path.parent.name}/{path.name} "$#" "$@" "$QREXEC_REMOTE_DOMAIN"; cat\n')
        path.chmod(mode)
    (local / "no-shebang.Svc").write_text('echo "no shebang" "$@"\n')
    (local / "no-shebang.Svc").chmod(0o755)
    return f"{run}::{local}:{etc}"


@pytest.mark.parametrize("args", [*DISPATCH_ARGS, ("no-shebang.Svc", "x")], ids=repr)
def test_the_c_agent_dispatches_services_as_the_dispatcher_script_does(agent, rpc_dirs, args):
    """The broker's command line for a service: the C agent runs it without
    the script, the Python agent through the script; same result."""
    argv0 = "/usr/lib/qlite/qubes-rpc-dispatch" if agent.kind == "c" else str(GUEST.dispatch)
    env = {"QLITE_RPC_DIRS": rpc_dirs, "QREXEC_REMOTE_DOMAIN": "work"}
    res = agent.host.run(2, [argv0, *args], b"payload\n", env=env)
    expected = subprocess.run(
        [str(GUEST.dispatch), *args], input=b"payload\n", capture_output=True, timeout=TIMEOUT, env=GUEST.env(**env)
    )
    assert (res.code, res.stdout, res.stderr.replace(b"sh: 1: ", b"")) == (
        expected.returncode,
        expected.stdout,
        expected.stderr,
    )
