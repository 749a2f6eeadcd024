"""The multiplexed channel between a VM qube's agent and the host.

One virtio-serial port carries many sessions at once: commands the host
runs in the VM (``qlite run``, RPC services aimed at the VM) and RPC calls
the VM makes (tunnelled to its socket at the broker). Host clients of a VM
speak the same frames to its supervisor, on one channel each.

This one module is used on both sides: template builds copy it into the
guest tools as ``qlite_guest.channel``. It uses the standard library only.

A frame is a 1-byte type, a 4-byte channel id, a 4-byte payload length and
the payload. The host opens even channel ids, the guest odd ones. An empty
STDIN, STDOUT, STDERR or DATA payload means end of that stream.
"""

from __future__ import annotations

import json
import struct

HEADER = struct.Struct(">BII")
VERSION = 1

HELLO = 0x10     # guest -> host, channel 0: JSON {"version"}; the agent is ready
OPEN = 0x11      # JSON {"kind": "exec", argv, user, cwd, env, tty} | {"kind": "rpc"}
STDIN = 0x12     # host -> guest (exec)
STDOUT = 0x13    # guest -> host (exec)
STDERR = 0x14    # guest -> host (exec)
EXIT = 0x15      # guest -> host: JSON {"code"}; ends an exec channel
DATA = 0x16      # either way: a tunnelled byte stream (rpc)
CLOSE = 0x17     # either way: the channel is gone
ERROR = 0x18     # JSON {"message"}; ends the channel
SIGNAL = 0x19    # host -> guest (exec): JSON {"signal": N} for the command's process group
PING = 0x1A      # either way, channel 0; answered with PONG
PONG = 0x1B

TYPES = frozenset({HELLO, OPEN, STDIN, STDOUT, STDERR, EXIT, DATA, CLOSE, ERROR, SIGNAL, PING, PONG})
MAX_PAYLOAD = 64 * 1024
MAX_CHANNEL = 0xFFFFFFFF


class ChannelError(Exception):
    """A malformed frame: the link cannot go on."""


def encode(kind: int, channel: int, payload: bytes = b"") -> bytes:
    if kind not in TYPES:
        raise ChannelError(f"unknown frame type {kind:#x}")
    if not 0 <= channel <= MAX_CHANNEL:
        raise ChannelError(f"channel {channel} out of range")
    if len(payload) > MAX_PAYLOAD:
        raise ChannelError(f"frame of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
    return HEADER.pack(kind, channel, len(payload)) + payload


def encode_json(kind: int, channel: int, obj: dict) -> bytes:
    return encode(kind, channel, json.dumps(obj, separators=(",", ":")).encode())


def decode_json(payload: bytes) -> dict:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ChannelError(f"malformed message: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ChannelError("malformed message: not a JSON object")
    return obj


def chunks(data: bytes) -> list[bytes]:
    """DATA split into payloads no larger than a frame allows."""
    return [data[i:i + MAX_PAYLOAD] for i in range(0, len(data), MAX_PAYLOAD)] or [b""]


class Decoder:
    """Incremental frame decoder; raises ChannelError on a bad frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, channel, length = HEADER.unpack_from(self._buf)
            if kind not in TYPES:
                raise ChannelError(f"unknown frame type {kind:#x}")
            if length > MAX_PAYLOAD:
                raise ChannelError(f"frame of {length} bytes is over the {MAX_PAYLOAD}-byte limit")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((kind, channel, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


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
    return {"argv": argv, "user": user, "cwd": cwd, "env": env, "tty": bool(req.get("tty", False))}
