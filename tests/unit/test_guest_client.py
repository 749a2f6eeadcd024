"""qrexec-client-vm (qlite_guest.client) against a fake broker over a real
Unix socket: the verdicts, the stream pump, exit codes and broken brokers."""

from __future__ import annotations

import shutil
import sys

import pytest

from qlite.rpc import wire

from .guest_helpers import GUEST, FakeBroker, allow_running, short_tmpdir

client = GUEST.module("client")


@pytest.fixture
def broker_factory():
    sockdir = short_tmpdir()
    made = []

    def make(handler):
        broker = FakeBroker(sockdir / f"rpc{len(made)}.sock", handler)
        made.append(broker)
        return broker

    yield make
    for b in made:
        b.close()
    shutil.rmtree(sockdir, ignore_errors=True)
    for b in made:
        assert not b.errors, b.errors


def echo_upper(requests):
    """Allow; answer stdin upper-cased on stdout, a note on stderr, exit 3."""

    def handler(conn):
        requests.append(conn.recv_request())
        conn.send_json(wire.RESULT, {"result": "allow", "target": "work"})
        data = conn.read_stdin().upper()
        for i in range(0, len(data), wire.MAX_PAYLOAD):
            conn.send(wire.STDOUT, data[i : i + wire.MAX_PAYLOAD])
        conn.send(wire.STDERR, b"note\n")
        conn.send(wire.STDOUT)
        conn.send(wire.STDERR)
        conn.send_json(wire.EXIT, {"code": 3})

    return handler


def test_allowed_call_joins_stdio_and_returns_the_service_code(broker_factory):
    requests = []
    broker = broker_factory(echo_upper(requests))
    proc = GUEST.run_tool("qrexec-client-vm", "work", "my.Service+some+arg", socket_path=broker.path, input=b"hello\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"HELLO\n", b"note\n")
    assert requests == [{"version": 1, "target": "work", "service": "my.Service", "argument": "some+arg"}]


def test_qlite_rpc_is_the_same_tool_and_dollar_dispvm_means_at_dispvm(broker_factory):
    requests = []
    broker = broker_factory(echo_upper(requests))
    proc = GUEST.run_tool("qlite-rpc", "$dispvm", "my.Service", socket_path=broker.path, input=b"x")
    assert (proc.returncode, proc.stdout) == (3, b"X")
    assert requests[0]["target"] == "@dispvm"


def test_large_streams_both_ways(broker_factory):
    requests = []
    broker = broker_factory(allow_running(lambda r: ["cat"], lambda r: GUEST.env(), requests))
    data = bytes(range(256)) * 8192  # 2 MiB: many frames, and backpressure
    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker.path, input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_service_that_ignores_stdin_still_ends(broker_factory):
    requests = []
    broker = broker_factory(
        allow_running(lambda r: ["sh", "-c", "exec 0<&-; echo done; exit 4"], lambda r: GUEST.env(), requests)
    )
    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker.path, input=b"z" * 3_000_000)
    assert (proc.returncode, proc.stdout) == (4, b"done\n")


def test_refused_call_exits_126_with_the_message(broker_factory):
    def deny(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "deny", "code": 126, "message": "the user said no"})

    broker = broker_factory(deny)
    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker.path)
    assert proc.returncode == 126
    assert b"refused" in proc.stderr and b"the user said no" in proc.stderr


def test_error_frame_fails_with_its_message(broker_factory):
    def error_after_allow(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "allow", "target": "work"})
        conn.send(wire.STDOUT, b"partial")
        conn.send_json(wire.ERROR, {"message": "the target died"})

    def error_instead_of_result(conn):
        conn.recv_request()
        conn.send_json(wire.ERROR, {"message": "malformed request"})

    for handler, message in ((error_after_allow, b"the target died"), (error_instead_of_result, b"malformed")):
        proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker_factory(handler).path)
        assert proc.returncode == client.EXIT_RPC_FAILED
        assert message in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "tail, message, output",
    [
        (wire.HEADER.pack(wire.STDOUT, 100) + b"0123456789", b"middle of a frame", b"some output"),
        (b"", b"before the service's exit code", b"some output"),
        # The codec rejects the whole read, which may hold the good frame too.
        (b"\x99" + wire.HEADER.pack(0, 0)[1:], b"unknown frame type 0x99", None),
    ],
)
def test_broker_closing_mid_call_is_a_clean_error(broker_factory, tail, message, output):
    def handler(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "allow", "target": "work"})
        conn.send(wire.STDOUT, b"some output")
        conn.send_raw(tail)

    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker_factory(handler).path)
    assert proc.returncode == client.EXIT_RPC_FAILED
    assert output is None or proc.stdout == output
    assert message in proc.stderr and b"Traceback" not in proc.stderr


def test_broker_closing_before_answering(broker_factory):
    def handler(conn):
        conn.recv_request()

    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker_factory(handler).path)
    assert proc.returncode == client.EXIT_RPC_FAILED
    assert b"without answering" in proc.stderr


def test_no_broker(tmp_path):
    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=tmp_path / "nothing.sock")
    assert proc.returncode == client.EXIT_RPC_FAILED
    assert b"cannot reach the qlite broker" in proc.stderr


@pytest.mark.parametrize("spec", ["bad/name", "", "svc+a b", "svc+../x", "x" * 65])
def test_bad_service_names_are_usage_errors(tmp_path, spec):
    proc = GUEST.run_tool("qrexec-client-vm", "work", spec, socket_path=tmp_path / "unused.sock")
    assert proc.returncode == 2
    assert b"invalid service" in proc.stderr


def test_local_program_talks_to_the_service(broker_factory, tmp_path):
    requests = []
    service = ["sh", "-c", 'read line; echo "pong:$line"; echo service-err >&2; exit 5']
    broker = broker_factory(allow_running(lambda r: service, lambda r: GUEST.env(), requests))
    local = [
        sys.executable,
        "-c",
        "import sys; print('ping', flush=True); sys.stderr.write('local got ' + sys.stdin.read())",
    ]
    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", *local, socket_path=broker.path, input=b"unused")
    assert proc.returncode == 5
    assert proc.stdout == b""
    assert b"local got pong:ping\n" in proc.stderr and b"service-err\n" in proc.stderr


def test_local_program_failure_is_not_hidden_by_a_successful_service(broker_factory):
    requests = []
    broker = broker_factory(allow_running(lambda r: ["cat"], lambda r: GUEST.env(), requests))
    proc = GUEST.run_tool("qrexec-client-vm", "work", "svc", "sh", "-c", "echo hi; exit 9", socket_path=broker.path)
    assert proc.returncode == 9


def test_local_program_is_not_started_when_refused(broker_factory, tmp_path):
    def deny(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "deny", "code": 126, "message": "no"})

    marker = tmp_path / "started"
    proc = GUEST.run_tool(
        "qrexec-client-vm", "work", "svc", "touch", str(marker), socket_path=broker_factory(deny).path
    )
    assert proc.returncode == 126
    assert not marker.exists()


def test_escape_characters_are_filtered_on_request(broker_factory):
    def handler(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "allow", "target": "work"})
        conn.send(wire.STDOUT, b"a\x1b]0;pwned\x07b\n")
        conn.send(wire.STDERR, b"c\x1b[2Jd\n")
        conn.send_json(wire.EXIT, {"code": 0})

    broker = broker_factory(handler)
    raw = GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker.path)
    assert raw.stdout == b"a\x1b]0;pwned\x07b\n"  # not a terminal: passed as is
    filtered = GUEST.run_tool(
        "qrexec-client-vm",
        "--filter-escape-chars-stdout",
        "--filter-escape-chars-stderr",
        "work",
        "svc",
        socket_path=broker.path,
    )
    assert filtered.stdout == b"a_]0;pwned_b\n" and filtered.stderr == b"c_[2Jd\n"


def test_exit_codes_from_signals_and_out_of_range(broker_factory):
    codes = iter([-9, 300])

    def handler(conn):
        conn.recv_request()
        conn.send_json(wire.RESULT, {"result": "allow", "target": "work"})
        conn.send_json(wire.EXIT, {"code": next(codes)})

    broker = broker_factory(handler)
    assert GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker.path).returncode == 137
    assert GUEST.run_tool("qrexec-client-vm", "work", "svc", socket_path=broker.path).returncode == 255


def test_pump_in_process_with_an_iterator_source(broker_factory):
    requests = []
    broker = broker_factory(echo_upper(requests))
    out, err = bytearray(), bytearray()
    with client.connect("work", "svc", "", path=str(broker.path)) as call:
        assert call.target == "work"
        code = client.pump(call, iter([b"ab", b"", b"c" * 100_000]), out.extend, err.extend)
    assert code == 3 and bytes(out) == b"AB" + b"C" * 100_000 and bytes(err) == b"note\n"
