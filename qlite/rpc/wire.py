"""The RPC wire format between a qube and qlite's broker (docs/rpc.md).

This one module is used on both sides: the host's broker imports it from
qlite, and template builds copy it into the guest tools as
``qlite_guest.wire``. It uses the standard library only.

A frame is a 1-byte type, a 4-byte big-endian payload length and the
payload. An empty STDIN, STDOUT or STDERR payload means end of that stream.
"""

from __future__ import annotations

import json
import socket
import struct
import time

VERSION = 1
HEADER = struct.Struct(">BI")

REQUEST = 0x01  # client -> broker, first frame: JSON {"version", "target", "service", "argument"}
STDIN = 0x02    # client -> broker
RESULT = 0x03   # broker -> client: JSON {"result": "allow", "target"} or {"result": "deny", ...}
STDOUT = 0x04   # broker -> client
STDERR = 0x05   # broker -> client
EXIT = 0x06     # broker -> client: JSON {"code": N}; the last frame
ERROR = 0x07    # broker -> client: JSON {"message": "..."}; the last frame

TYPES = frozenset({REQUEST, STDIN, RESULT, STDOUT, STDERR, EXIT, ERROR})
MAX_PAYLOAD = 64 * 1024
MAX_REQUEST = 4 * 1024

EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127


class WireError(Exception):
    """A malformed or oversized frame: the connection cannot go on."""


def encode(kind: int, payload: bytes = b"") -> bytes:
    if kind not in TYPES:
        raise WireError(f"unknown frame type {kind:#x}")
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"frame of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: int, obj: dict) -> bytes:
    return encode(kind, json.dumps(obj, separators=(",", ":")).encode())


def decode_json(payload: bytes, limit: int = MAX_PAYLOAD) -> dict:
    if len(payload) > limit:
        raise WireError(f"message of {len(payload)} bytes is over the {limit}-byte limit")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"malformed message: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("malformed message: not a JSON object")
    return obj


class Decoder:
    """Incremental frame decoder; raises WireError on a bad frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if kind not in TYPES:
                raise WireError(f"unknown frame type {kind:#x}")
            if length > MAX_PAYLOAD:
                raise WireError(f"frame of {length} bytes is over the {MAX_PAYLOAD}-byte limit")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


def recv_frame(sock: socket.socket, decoder: Decoder, backlog: list[tuple[int, bytes]],
               deadline: float | None = None) -> tuple[int, bytes] | None:
    """The next frame from SOCK (None at a clean end of stream).

    With DEADLINE (a time.monotonic() value), the whole frame must arrive
    by then, however slowly its bytes trickle in; else TimeoutError."""
    while not backlog:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the frame did not arrive in time")
            sock.settimeout(left)
        data = sock.recv(MAX_PAYLOAD + HEADER.size)
        if not data:
            if decoder.pending:
                raise WireError("connection closed in the middle of a frame")
            return None
        backlog.extend(decoder.feed(data))
    return backlog.pop(0)
