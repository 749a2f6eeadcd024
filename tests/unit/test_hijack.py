"""Taking over an HTTP connection on a Unix socket (attach / exec start),
against a tiny server thread that answers like the engine would."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from qlite.engines.hijack import hijack
from qlite.errors import EngineError


class OneShotServer:
    """Accept one connection, read the request, send REPLY, keep the socket."""

    def __init__(self, path: str, reply: bytes, close_after: bool = False):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.reply = reply
        self.close_after = close_after
        self.request = b""
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        while b"\r\n\r\n" not in self.request:
            chunk = conn.recv(4096)
            if not chunk:
                break
            self.request += chunk
        head, _, body = self.request.partition(b"\r\n\r\n")
        length = int(dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:]).get("Content-Length", "0"))
        while len(body) < length:
            body += conn.recv(4096)
        self.body = body
        conn.sendall(self.reply)
        if self.close_after:
            conn.close()

    def close(self) -> None:
        self.thread.join(5)
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "engine.sock")


def test_upgrade_returns_the_socket_and_early_bytes(sock_path):
    server = OneShotServer(sock_path, b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\n\r\n\x01\x00\x00\x00")
    try:
        sock, rest = hijack(sock_path, "/v4.0.0/libpod/exec/abc/start", {"Detach": False, "Tty": False})
        with sock:
            assert sock.gettimeout() is None  # streams may idle for as long as the command runs
            server.thread.join(5)
            server.conn.sendall(b"\x00\x00\x00\x02hi")
            got = rest
            while len(got) < 10:
                got += sock.recv(64)
        assert got == b"\x01\x00\x00\x00\x00\x00\x00\x02hi"
        first_line = server.request.split(b"\r\n", 1)[0]
        assert first_line == b"POST /v4.0.0/libpod/exec/abc/start HTTP/1.1"
        assert b"Upgrade: tcp" in server.request
        assert json.loads(server.body) == {"Detach": False, "Tty": False}
    finally:
        server.close()


def test_200_is_accepted_too(sock_path):
    server = OneShotServer(sock_path, b"HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\n")
    try:
        sock, rest = hijack(sock_path, "/containers/x/attach")
        sock.close()
        assert rest == b""
        assert b"Content-Length: 0" in server.request
    finally:
        server.close()


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        (
            b'HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n{"cause":"no such container",'
            b'"message":"no container with id x found"}',
            "no container with id x found",
        ),
        (b"HTTP/1.1 500 Internal Server Error\r\n\r\nplain text failure", "plain text failure"),
        (b"HTTP/1.1 409 Conflict\r\n\r\n{}", "409 Conflict"),
        (b"garbage\r\n\r\n", "engine refused the request"),
    ],
)
def test_refusals_are_engine_errors(sock_path, reply, fragment):
    server = OneShotServer(sock_path, reply, close_after=True)
    try:
        with pytest.raises(EngineError, match=fragment) as exc:
            hijack(sock_path, "/containers/x/attach")
        assert "\n" not in str(exc.value)
    finally:
        server.close()


def test_a_closed_connection_is_an_engine_error(sock_path):
    server = OneShotServer(sock_path, b"HTTP/1.1 101", close_after=True)
    try:
        with pytest.raises(EngineError, match="closed the connection"):
            hijack(sock_path, "/containers/x/attach")
    finally:
        server.close()


def test_no_engine_is_an_engine_error(sock_path):
    with pytest.raises(EngineError, match="connection failed"):
        hijack(sock_path, "/containers/x/attach")
