"""Open an HTTP connection over a Unix socket and take it over (hijack), as
the libpod and Docker APIs do for attach and exec start."""

from __future__ import annotations

import json
import socket

from qlite.errors import EngineError

MAX_HEADER = 65536


def hijack(sock_path: str, path: str, body: dict | None = None, timeout: float = 30.0) -> tuple[socket.socket, bytes]:
    """POST to PATH asking for an upgrade; return the socket and any bytes
    that arrived after the response headers."""
    payload = json.dumps(body).encode() if body is not None else b""
    request = (
        f"POST {path} HTTP/1.1\r\n"
        "Host: d\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: tcp\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk or len(buf) > MAX_HEADER:
                raise EngineError(f"engine closed the connection during {path}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status not in (101, 200):
            raise EngineError(_error_message(status_line, rest))
        sock.settimeout(None)
        return sock, rest
    except OSError as exc:
        sock.close()
        raise EngineError(f"engine connection failed during {path}: {exc}") from exc
    except EngineError:
        sock.close()
        raise


def _error_message(status_line: str, body: bytes) -> str:
    try:
        data = json.loads(body.decode(errors="replace") or "{}")
        msg = data.get("message") or data.get("cause") or ""
    except ValueError:
        msg = body.decode(errors="replace").strip()
    return f"engine refused the request ({status_line}): {msg}".strip()
