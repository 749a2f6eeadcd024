"""The multiplexed channel between a VM qube's agent and the host.

One virtio-serial port carries many sessions at once: commands the host
runs in the VM (``qlite run``, RPC services aimed at the VM) and RPC calls
the VM makes (tunnelled to its socket at the broker). Host clients of a VM
speak the same frames to its supervisor, on one channel each.

This one module is used on both sides: template builds copy it into the
guest tools as ``qlite_guest.channel``, next to the frame codec it shares
with the RPC wire format (``frames``). It uses the standard library only.

A frame is a 1-byte type, a 4-byte channel id, a 4-byte payload length and
the payload. The host opens even channel ids, the guest odd ones. An empty
STDIN, STDOUT, STDERR or DATA payload means end of that stream.
"""

from __future__ import annotations

# Relative: the codec is this module's sibling on the host and in the guest.
from . import frames

VERSION = 1

HELLO = 0x10  # guest -> host, channel 0: JSON {"version"}; the agent is ready
OPEN = 0x11  # JSON {"kind": "exec", argv, user, cwd, env, tty} | {"kind": "rpc"}
STDIN = 0x12  # host -> guest (exec)
STDOUT = 0x13  # guest -> host (exec)
STDERR = 0x14  # guest -> host (exec)
EXIT = 0x15  # guest -> host: JSON {"code"}; ends an exec channel
DATA = 0x16  # either way: a tunnelled byte stream (rpc)
CLOSE = 0x17  # either way: the channel is gone
ERROR = 0x18  # JSON {"message"}; ends the channel
SIGNAL = 0x19  # host -> guest (exec): JSON {"signal": N} for the command's process group
PING = 0x1A  # either way, channel 0; answered with PONG
PONG = 0x1B
RESIZE = 0x1C  # host -> guest (exec with a terminal): JSON {"rows", "cols"}

TYPES = frozenset({HELLO, OPEN, STDIN, STDOUT, STDERR, EXIT, DATA, CLOSE, ERROR, SIGNAL, PING, PONG, RESIZE})
# The frames each side may send. A frame the other side alone sends is a
# forgery, and ends the link.
FROM_HOST = frozenset({OPEN, STDIN, CLOSE, SIGNAL, PING, PONG, RESIZE, DATA})
FROM_GUEST = frozenset({HELLO, OPEN, STDOUT, STDERR, EXIT, DATA, CLOSE, ERROR, PING, PONG})
MAX_PAYLOAD = 64 * 1024
MAX_CHANNEL = frames.MAX_FIELD


class ChannelError(frames.FrameError):
    """A malformed frame: the link cannot go on."""


FORMAT: frames.Format[tuple[int, int, bytes]] = frames.Format(
    TYPES, MAX_PAYLOAD, fields=("channel",), error=ChannelError
)
HEADER = FORMAT.header


def encode(kind: int, channel: int, payload: bytes = b"") -> bytes:
    return FORMAT.encode(kind, (channel,), payload)


def encode_json(kind: int, channel: int, obj: dict) -> bytes:
    return encode(kind, channel, frames.encode_json(obj))


def decode_json(payload: bytes) -> dict:
    return frames.decode_json(payload, ChannelError)


def chunks(data: bytes) -> list[bytes]:
    """DATA split into payloads no larger than a frame allows."""
    return [data[i : i + MAX_PAYLOAD] for i in range(0, len(data), MAX_PAYLOAD)] or [b""]


class Decoder(frames.Decoder[tuple[int, int, bytes]]):
    """Incremental frame decoder of (type, channel, payload); raises ChannelError on a bad frame."""

    def __init__(self) -> None:
        super().__init__(FORMAT)


def validate_exec(req: dict) -> dict:
    """Check an exec OPEN request's fields; return it normalised."""
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ChannelError("exec needs a non-empty argv of strings")
    user = req.get("user", "root")
    cwd = req.get("cwd", "/")
    env = req.get("env", {})
    if not isinstance(user, str) or not isinstance(cwd, str):
        raise ChannelError("user and cwd must be strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ChannelError("env must map strings to strings")
    out = {"argv": argv, "user": user, "cwd": cwd, "env": env, "tty": bool(req.get("tty", False))}
    if "rows" in req or "cols" in req:
        out["rows"], out["cols"] = validate_size(req)
    return out


def validate_size(req: dict) -> tuple[int, int]:
    """A terminal's (rows, cols), each a whole number from 1 to 65535."""
    rows, cols = req.get("rows"), req.get("cols")
    for v in (rows, cols):
        if type(v) is not int or not 0 < v <= 0xFFFF:
            raise ChannelError("a terminal size is two whole numbers from 1 to 65535")
    return rows, cols  # type: ignore[return-value]
