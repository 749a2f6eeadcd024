"""qlite-connect-tcp and qubes.ConnectTCP: port parsing, and a forwarded
connection through a fake broker running the real service."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .guest_helpers import GUEST, dispatching_broker, short_tmpdir

connecttcp = GUEST.module("connecttcp")


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("work:22", (22, "work", 22)),
        ("2222:work:22", (2222, "work", 22)),
        (":work:80", (80, "work", 80)),
        ("8080::80", (8080, "@default", 80)),
        (":80", (80, "@default", 80)),
    ],
)
def test_parse_spec(spec, parsed):
    assert connecttcp.parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["work", "work:0", "work:65536", "work:http", "x:work:22", "1:2:3:4", "work:-1"])
def test_parse_spec_refuses(spec):
    with pytest.raises(ValueError):
        connecttcp.parse_spec(spec)


@pytest.mark.parametrize("port", ["", "0", "65536", "abc", "22 ", "+22"])
def test_service_refuses_bad_ports(port):
    env = GUEST.env(QREXEC_SERVICE_ARGUMENT=port)
    proc = subprocess.run(
        [str(GUEST.rpc_dir / "qubes.ConnectTCP"), *([port] if port else [])], capture_output=True, env=env, timeout=30
    )
    assert proc.returncode == 1 and b"not a port number" in proc.stderr


class EchoServer:
    """A TCP server thread answering each connection with b"echo:" and all it read."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"echo:" + data)

    def close(self) -> None:
        # close() alone leaves the thread in accept4(fd) forever. Any signal
        # restarts that call on the same fd number (a SIGCHLD that arrives
        # while subprocess has every signal blocked for vfork is enough), and
        # by then the number may be a later test's listener: the thread took
        # test_guest_gpg's broker connections and hung them. shutdown() wakes
        # it (EINVAL); only then is the number given back.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=10)
        self.listener.close()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def connect_retry(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_forwarded_connections_reach_the_target_port(tmp_path):
    server = EchoServer()
    port = server.port
    sockdir = short_tmpdir()
    broker = dispatching_broker(sockdir / "rpc.sock", tmp_path)
    local = free_port()
    forwarder = subprocess.Popen(
        [sys.executable, str(GUEST.bin("qlite-connect-tcp")), f"{local}:work:{port}"],
        env=GUEST.env(QLITE_RPC_SOCKET=str(broker.path)),
        stderr=subprocess.PIPE,
    )
    try:
        for message in (b"first", b"second" * 20000):
            with connect_retry(local, time.monotonic() + 10) as conn:
                conn.sendall(message)
                conn.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
            assert reply == b"echo:" + message
        assert [r["service"] + "+" + r["argument"] for r in broker.requests] == [f"qubes.ConnectTCP+{port}"] * 2
        assert {r["target"] for r in broker.requests} == {"work"}
    finally:
        forwarder.kill()
        forwarder.wait()
        forwarder.stderr.close()
        broker.close()
        server.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert not broker.errors, broker.errors


def _socket_with_number(number: int) -> socket.socket:
    """A new Unix listener on fd NUMBER (the lowest free number goes first)."""
    spare: list[socket.socket] = []
    try:
        for _ in range(256):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if s.fileno() == number:
                return s
            spare.append(s)
        raise AssertionError(f"fd {number} was not given back")
    finally:
        for s in spare:
            s.close()


def _wait_in_syscall_on(thread: threading.Thread, fd: int) -> None:
    """Wait until THREAD is blocked in a system call on FD (accept(), here)."""
    deadline = time.monotonic() + 10
    while True:
        fields = Path(f"/proc/self/task/{thread.native_id}/syscall").read_text().split()
        if fields[0] != "running" and len(fields) > 1 and int(fields[1], 16) == fd:
            return
        assert time.monotonic() < deadline, f"the thread never blocked on fd {fd}"
        time.sleep(0.01)


def test_a_closed_echo_server_takes_no_later_connection():
    # The test_guest_gpg flake: a server thread left in accept4() took the
    # connections of the next listener to get its fd number.
    server = EchoServer()
    number = server.listener.fileno()
    _wait_in_syscall_on(server.thread, number)
    server.close()
    later = _socket_with_number(number)
    sockdir = short_tmpdir()
    try:
        later.bind(str(sockdir / "later.sock"))
        later.listen()
        if server.thread.is_alive():
            # What a SIGCHLD during subprocess's vfork window does to a thread
            # left in accept4(): the call is restarted on the same fd number.
            old = signal.signal(signal.SIGUSR1, lambda *_: None)
            signal.siginterrupt(signal.SIGUSR1, False)
            try:
                signal.pthread_kill(server.thread.ident, signal.SIGUSR1)
                time.sleep(0.2)
            finally:
                signal.signal(signal.SIGUSR1, old)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(sockdir / "later.sock"))
            time.sleep(0.5)  # a thread already in accept() would take it now
            later.settimeout(5)
            try:
                conn, _ = later.accept()
            except TimeoutError:
                raise AssertionError("the closed echo server's thread took the connection") from None
            conn.close()
    finally:
        later.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_service_reports_a_closed_port():
    port = free_port()
    proc = subprocess.run(
        [str(GUEST.rpc_dir / "qubes.ConnectTCP"), str(port)], capture_output=True, env=GUEST.env(), timeout=30
    )
    assert proc.returncode == 1 and b"cannot connect to 127.0.0.1" in proc.stderr
