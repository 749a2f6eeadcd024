"""The C qrexec-client-vm (guest-src/qrexec-client.c) against the Python one
(qlite_guest.client): the same broker, the same arguments and input, the
same stdout, stderr and exit code, the REQUEST the broker saw included."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlite.rpc import wire

from .guest_helpers import GUEST, FakeBroker, allow_running, short_tmpdir

FAST = GUEST.bin("qrexec-client-vm")
PYTHON = GUEST.root / "usr/lib/qlite/qrexec-client-vm.py"


def test_the_fast_client_is_compiled_and_the_python_one_is_its_fallback():
    assert FAST.read_bytes()[:4] == b"\x7fELF"
    assert PYTHON.read_text().startswith("#!/usr/bin/python3 -SE\n")


@pytest.fixture(scope="module")
def sockdir():
    d = short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


_serial = itertools.count()


class Both:
    """One broker HANDLER; each client run against it in turn."""

    def __init__(self, sockdir, handler):
        self.requests: list[bytes] = []

        def recording(conn):
            frame = conn.recv()
            assert frame is not None
            self.requests.append(frame[1])
            conn.backlog.insert(0, frame)  # the handler reads it again
            handler(conn)

        self.broker = FakeBroker(sockdir / f"b{next(_serial)}.sock", recording)

    def run(self, exe, *args, input=b"", **env):
        proc = subprocess.run(
            [str(exe), *args],
            input=input,
            capture_output=True,
            env=GUEST.env(QLITE_RPC_SOCKET=str(self.broker.path), **env),
            timeout=60,
        )
        return proc.returncode, proc.stdout, proc.stderr

    def compare(self, *args, input=b""):
        """Both clients' (code, stdout, stderr); asserts they are the same."""
        py = self.run(PYTHON, *args, input=input)
        fast = self.run(FAST, *args, input=input)
        assert fast == py
        if len(self.requests) == 2:
            assert self.requests[0] == self.requests[1]
        return fast

    def close(self):
        self.broker.close()
        assert not self.broker.errors, self.broker.errors


@pytest.fixture
def both(sockdir):
    made = []

    def make(handler):
        b = Both(sockdir, handler)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def answering(*frames: bytes, read_stdin: bool = False):
    """A handler sending FRAMES (raw bytes), in one write, after the request."""

    def handler(conn):
        conn.recv_request()
        if read_stdin:
            conn.send_raw(frames[0])
            conn.read_stdin()
            conn.send_raw(b"".join(frames[1:]))
        else:
            conn.send_raw(b"".join(frames))

    return handler


def j(kind, obj):
    return wire.encode(kind, json.dumps(obj).encode())


ALLOW = j(wire.RESULT, {"result": "allow", "target": "work"})


def echo_upper(conn):
    conn.recv_request()
    conn.send_json(wire.RESULT, {"result": "allow", "target": "work"})
    data = conn.read_stdin().upper()
    for i in range(0, len(data), wire.MAX_PAYLOAD):
        conn.send(wire.STDOUT, data[i : i + wire.MAX_PAYLOAD])
    conn.send(wire.STDERR, b"note\n")
    conn.send(wire.STDOUT)
    conn.send(wire.STDERR)
    conn.send_json(wire.EXIT, {"code": 3})


def test_allowed_call_with_stdin(both):
    b = both(echo_upper)
    assert b.compare("work", "my.Service+some+arg", input=b"hello\n") == (3, b"HELLO\n", b"note\n")
    assert json.loads(b.requests[0]) == {
        "version": 1,
        "target": "work",
        "service": "my.Service",
        "argument": "some+arg",
    }


def test_a_mebibyte_each_way(both):
    data = os.urandom(1 << 20)
    b = both(allow_running(lambda r: ["cat"], lambda r: GUEST.env(), []))
    code, out, err = b.compare("work", "svc", input=data)
    assert (code, out == data, err) == (0, True, b"")


@pytest.mark.parametrize("target", ["$dispvm", "$dispvm:dvm-tpl", "@default", 'we"ird\\name', ""])
def test_targets_are_sent_alike(both, target):
    b = both(answering(j(wire.RESULT, {"result": "deny"})))
    assert b.compare(target, "svc")[0] == 126


CASES = {
    "deny": [j(wire.RESULT, {"result": "deny", "code": 126, "message": "policy says no"})],
    "no-such-service": [j(wire.RESULT, {"result": "deny", "code": 127, "message": "no such service"})],
    "deny-bare": [j(wire.RESULT, {"result": "deny"})],
    "deny-empty-message": [j(wire.RESULT, {"result": "deny", "message": "", "code": 0})],
    "deny-bool-code": [j(wire.RESULT, {"result": "deny", "code": True, "message": 5})],
    "deny-big-code": [j(wire.RESULT, {"result": "deny", "code": 10**30})],
    "deny-float-code": [j(wire.RESULT, {"result": "deny", "code": 3.0})],
    "deny-unsafe-message": [
        j(wire.RESULT, {"result": "deny", "message": "a\x1b[2J\u202e\u2028b\x85\tc\ud800" + "é" * 300})
    ],
    "deny-last-key-wins": [wire.encode(wire.RESULT, b'{"result":"allow","result":"deny","code":5,"code":7}')],
    "result-not-object": [wire.encode(wire.RESULT, b'["allow"]')],
    "result-not-json": [wire.encode(wire.RESULT, b"allow")],
    "result-extra": [wire.encode(wire.RESULT, b' {"result":"allow"} x')],
    "result-not-utf8": [wire.encode(wire.RESULT, b'{"result":"\xff"}')],
    "result-nan": [wire.encode(wire.RESULT, b'{"code":NaN}')],
    "result-deep": [wire.encode(wire.RESULT, b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}")],
    "result-long-int": [wire.encode(wire.RESULT, b'{"code":' + b"1" * 4301 + b"}")],
    "error-first": [j(wire.ERROR, {"message": "the broker is sad"})],
    "error-bad-json": [wire.encode(wire.ERROR, b"{")],
    "error-no-message": [j(wire.ERROR, {"message": 3})],
    "stdout-first": [wire.encode(wire.STDOUT, b"x")],
    "closed-at-once": [],
    "closed-in-a-header": [b"\x03\x00"],
    "closed-in-a-payload": [wire.HEADER.pack(wire.RESULT, 10) + b"{}"],
    "unknown-type-first": [b"\x09\x00\x00\x00\x00"],
    "oversized-first": [wire.HEADER.pack(wire.RESULT, wire.MAX_PAYLOAD + 1)],
    "allow-then-close": [ALLOW],
    "allow-then-half-frame": [ALLOW, wire.encode(wire.STDOUT, b"abc")[:6]],
    "allow-then-output-and-error": [ALLOW, wire.encode(wire.STDOUT, b"out\n"), j(wire.ERROR, {"message": "gone"})],
    "allow-then-unknown-type": [ALLOW, wire.encode(wire.STDOUT, b"lost\n"), b"\x00\x00\x00\x00\x00"],
    "allow-then-request-frame": [ALLOW, wire.encode(wire.REQUEST, b"{}")],
    "allow-then-oversized-request": [ALLOW, wire.HEADER.pack(wire.REQUEST, wire.MAX_REQUEST + 1)],
    "allow-then-result": [ALLOW, ALLOW],
    "exit-0": [ALLOW, j(wire.EXIT, {"code": 0})],
    "exit-signal": [ALLOW, j(wire.EXIT, {"code": -9})],
    "exit-big-negative": [ALLOW, j(wire.EXIT, {"code": -(10**20)})],
    "exit-out-of-range": [ALLOW, j(wire.EXIT, {"code": 300})],
    "exit-bool": [ALLOW, j(wire.EXIT, {"code": False})],
    "exit-string": [ALLOW, j(wire.EXIT, {"code": "1"})],
    "exit-missing": [ALLOW, j(wire.EXIT, {})],
    "exit-not-json": [ALLOW, wire.encode(wire.EXIT, b"")],
    "exit-then-garbage-same-write": [ALLOW, j(wire.EXIT, {"code": 4}), b"\xff" * 5],
    "stderr-and-empty-streams": [
        ALLOW,
        wire.encode(wire.STDERR, b"warn\x1b[1m\n"),
        wire.encode(wire.STDOUT),
        wire.encode(wire.STDERR),
        j(wire.EXIT, {"code": 1}),
    ],
}


# Malformed JSON, which the lean JSON decoding reports through json.decoder,
# loaded for it only then.
CASES["result-bad-delimiter"] = [wire.encode(wire.RESULT, b'{"result" "allow"}')]
CASES["exit-unterminated-string"] = [ALLOW, wire.encode(wire.EXIT, b'{"code')]


@pytest.mark.parametrize("name", sorted(CASES))
def test_answers_from_the_broker(both, name):
    b = both(answering(*CASES[name]))
    b.compare("work", "svc", input=b"ignored\n")


def test_the_stdin_is_fed_before_the_answer_ends(both):
    b = both(answering(ALLOW, wire.encode(wire.STDOUT, b"got it\n"), j(wire.EXIT, {"code": 0}), read_stdin=True))
    assert b.compare("work", "svc", input=b"x" * 300_000) == (0, b"got it\n", b"")


def test_unreachable_broker(sockdir):
    for path in (sockdir / "nothing.sock", sockdir):
        env = GUEST.env(QLITE_RPC_SOCKET=str(path))
        runs = [
            subprocess.run([str(exe), "work", "svc"], capture_output=True, env=env, timeout=30)
            for exe in (PYTHON, FAST)
        ]
        py, fast = ((p.returncode, p.stdout, p.stderr) for p in runs)
        assert fast == py
        assert fast[0] == 125 and b"cannot reach the qlite broker" in fast[2]


ESCAPES = [
    ALLOW,
    wire.encode(wire.STDOUT, bytes(range(256))),
    wire.encode(wire.STDERR, b"c\x1b[2Jd\x7f\t\r\n"),
    j(wire.EXIT, {"code": 0}),
]


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--filter-escape-chars-stdout"],
        ["--filter-escape-chars-stderr", "--buffer-size=9"],
        ["--filter-escape-chars-stdout", "--no-filter-escape-chars-stdout", "--filter-escape-chars-stderr"],
        ["--no-filter-escape-chars-stdout", "--no-filter-escape-chars-stderr", "--"],
    ],
)
def test_escape_filtering(both, options):
    b = both(answering(*ESCAPES))
    code, out, err = b.compare(*options, "work", "svc")
    assert code == 0
    filtered = "--filter-escape-chars-stdout" in options and "--no-filter-escape-chars-stdout" not in options
    assert (b"\x1b" not in out) == filtered


@pytest.mark.parametrize(
    "args",
    [
        ["-h"],
        ["--help"],
        ["--bogus", "work", "svc"],
        ["work"],
        [],
        ["work", "bad/name"],
        ["work", "svc+a b"],
        ["work", "x" * 65],
        ["work", ".."],
        ["work", "svc", "sh", "-c", "echo local; exit 9"],
        ["--", "-work", "svc", "true"],
        ["wörk", "svc"],
    ],
)
def test_what_the_python_client_answers(both, args):
    b = both(allow_running(lambda r: ["cat"], lambda r: GUEST.env(), []))
    b.compare(*args, input=b"in\n")


def test_the_python_client_is_found_from_the_absolute_path_too(tmp_path):
    """A copy of the binary outside a tree still finds /usr/lib/qlite's, or says why not."""
    copy = tmp_path / "bin/qrexec-client-vm"
    copy.parent.mkdir()
    shutil.copy2(FAST, copy)
    proc = subprocess.run([str(copy), "--help"], capture_output=True, timeout=30)
    if os.path.exists("/usr/lib/qlite/qrexec-client-vm.py"):
        assert proc.returncode == 0
    else:
        assert (proc.returncode, proc.stderr) == (
            125,
            b"qrexec-client-vm: cannot run the Python client: No such file or directory\n",
        )


# -- random answers: the same exit code --------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from(["result", "code", "message", "target", "x"])
VALUES = st.sampled_from(["allow", "deny", 0, 1, 126, 127, 255, 256, -3, True]) | JSON_VALUES
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=4).map(lambda d: json.dumps(d).encode())
PAYLOADS = (
    OBJECTS
    | st.binary(max_size=40)
    | OBJECTS.flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i] + b"," + b[i:]))
)
FRAME = st.builds(
    lambda kind, payload: wire.HEADER.pack(kind, len(payload)) + payload,
    st.sampled_from([wire.RESULT, wire.STDOUT, wire.STDERR, wire.EXIT, wire.ERROR]),
    PAYLOADS,
)
STREAMS = st.lists(FRAME | st.binary(max_size=12), max_size=5).map(b"".join)


def same_code(b, args=("work", "svc")):
    py = b.run(PYTHON, *args)
    fast = b.run(FAST, *args)
    assert b"Traceback" not in py[2], py
    assert fast[0] == py[0], (py, fast)
    assert fast[1] == py[1], (py, fast)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(result=PAYLOADS)
def test_random_results(sockdir, result):
    b = Both(sockdir, answering(wire.HEADER.pack(wire.RESULT, len(result)) + result))
    try:
        same_code(b)
    finally:
        b.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exit_payload=PAYLOADS)
def test_random_exits(sockdir, exit_payload):
    b = Both(sockdir, answering(ALLOW, wire.HEADER.pack(wire.EXIT, len(exit_payload)) + exit_payload))
    try:
        same_code(b)
    finally:
        b.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=STREAMS, allowed=st.booleans())
def test_random_streams(sockdir, stream, allowed):
    b = Both(sockdir, answering((ALLOW if allowed else b"") + stream))
    try:
        same_code(b)
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
