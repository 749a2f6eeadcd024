"""The RPC wire format between a qube and qlite's broker (docs/rpc.md).

This one module is used on both sides: the host's broker imports it from
qlite, and template builds copy it into the guest tools as
``qlite_guest.wire``, next to the frame codec it shares with the agent
channel (``frames``). It uses the standard library only.

A frame is a 1-byte type, a 4-byte big-endian payload length and the
payload. An empty STDIN, STDOUT or STDERR payload means end of that stream.
"""

from __future__ import annotations

# The codec's module sits next to this one in the guest, in qlite.agent on the
# host. Each type-checker run sees one side only, hence the ignore.
if __package__ == "qlite_guest":
    from qlite_guest import frames
else:
    from qlite.agent import frames  # type: ignore[no-redef, unused-ignore]

TYPE_CHECKING = False
if TYPE_CHECKING:
    # _socket's class, socket.socket's base: the guest's client uses it
    # without socket.py, whose enums cost a qube's Python start dearly.
    from _socket import socket

VERSION = 1

REQUEST = 0x01  # client -> broker, first frame: JSON {"version", "target", "service", "argument"}
STDIN = 0x02  # client -> broker
RESULT = 0x03  # broker -> client: JSON {"result": "allow", "target"} or {"result": "deny", ...}
STDOUT = 0x04  # broker -> client
STDERR = 0x05  # broker -> client
EXIT = 0x06  # broker -> client: JSON {"code": N}; the last frame
ERROR = 0x07  # broker -> client: JSON {"message": "..."}; the last frame

TYPES = frozenset({REQUEST, STDIN, RESULT, STDOUT, STDERR, EXIT, ERROR})
MAX_PAYLOAD = 64 * 1024
MAX_REQUEST = 4 * 1024

EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127


class WireError(frames.FrameError):
    """A malformed or oversized frame: the connection cannot go on."""


# The broker reads a REQUEST before it knows who is asking for what, so a
# request has a tighter limit, refused from its header alone.
FORMAT: frames.Format[tuple[int, bytes]] = frames.Format(
    TYPES, MAX_PAYLOAD, limits={REQUEST: MAX_REQUEST}, error=WireError
)
HEADER = FORMAT.header


def encode(kind: int, payload: bytes = b"") -> bytes:
    return FORMAT.encode(kind, (), payload)


def encode_json(kind: int, obj: dict) -> bytes:
    return encode(kind, frames.encode_json(obj))


def decode_json(payload: bytes, limit: int = MAX_PAYLOAD) -> dict:
    if len(payload) > limit:
        raise WireError(f"message of {len(payload)} bytes is over the {limit}-byte limit")
    return frames.decode_json(payload, WireError)


class Decoder(frames.Decoder[tuple[int, bytes]]):
    """Incremental frame decoder of (type, payload); raises WireError on a bad frame."""

    def __init__(self) -> None:
        super().__init__(FORMAT)


def recv_frame(
    sock: socket, decoder: Decoder, backlog: list[tuple[int, bytes]], deadline: float | None = None
) -> tuple[int, bytes] | None:
    """The next frame from SOCK (None at a clean end of stream).

    With DEADLINE (a time.monotonic() value), the whole frame must arrive
    by then, however slowly its bytes trickle in; else TimeoutError."""
    return frames.recv_frame(sock, decoder, backlog, deadline)
