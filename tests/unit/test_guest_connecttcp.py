"""qlite-connect-tcp and qubes.ConnectTCP: port parsing, and a forwarded
connection through a fake broker running the real service."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from .guest_helpers import GUEST, dispatching_broker, short_tmpdir

connecttcp = GUEST.module("connecttcp")


@pytest.mark.parametrize("spec, parsed", [
    ("work:22", (22, "work", 22)),
    ("2222:work:22", (2222, "work", 22)),
    (":work:80", (80, "work", 80)),
    ("8080::80", (8080, "@default", 80)),
    (":80", (80, "@default", 80)),
])
def test_parse_spec(spec, parsed):
    assert connecttcp.parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["work", "work:0", "work:65536", "work:http", "x:work:22", "1:2:3:4", "work:-1"])
def test_parse_spec_refuses(spec):
    with pytest.raises(ValueError):
        connecttcp.parse_spec(spec)


@pytest.mark.parametrize("port", ["", "0", "65536", "abc", "22 ", "+22"])
def test_service_refuses_bad_ports(port):
    env = GUEST.env(QREXEC_SERVICE_ARGUMENT=port)
    proc = subprocess.run([str(GUEST.rpc_dir / "qubes.ConnectTCP"), *([port] if port else [])],
                          capture_output=True, env=env, timeout=30)
    assert proc.returncode == 1 and b"not a port number" in proc.stderr


def echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"echo:" + data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


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
    server, port = echo_server()
    sockdir = short_tmpdir()
    broker = dispatching_broker(sockdir / "rpc.sock", tmp_path)
    local = free_port()
    forwarder = subprocess.Popen(
        [sys.executable, str(GUEST.bin("qlite-connect-tcp")), f"{local}:work:{port}"],
        env=GUEST.env(QLITE_RPC_SOCKET=str(broker.path)), stderr=subprocess.PIPE)
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


def test_service_reports_a_closed_port():
    port = free_port()
    proc = subprocess.run([str(GUEST.rpc_dir / "qubes.ConnectTCP"), str(port)], capture_output=True,
                          env=GUEST.env(), timeout=30)
    assert proc.returncode == 1 and b"cannot connect to 127.0.0.1" in proc.stderr
