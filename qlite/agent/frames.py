"""Length-prefixed frames over a byte stream: the one codec under both the
RPC wire format (qlite.rpc.wire) and the agent channel (qlite.agent.channel).

A frame is a 1-byte type, the format's own fixed fields (unsigned 32-bit
each: none for RPC, a channel id for the agent), a 32-bit payload length
and the payload, all big-endian. A format names its frame types, fields,
payload limits and error class; what the payloads mean is its own business.

The peer may be a hostile qube, so a decoder checks each header before it
takes a byte of that frame's payload, and holds at most one partial frame.

This one module is used on both sides: template builds copy it into the
guest tools as ``qlite_guest.frames``, next to the two formats. It uses the
standard library only.
"""

from __future__ import annotations

import _json
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from types import GenericAlias

# Every RPC call in a qube starts a Python that imports this module, and
# typing would be its only reason to load typing: the type checker sees
# typing's Generic, the interpreter a stand-in subscripted the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    # _socket's class, socket.socket's base: what the guest's client uses.
    from _socket import socket
    from typing import Generic, TypeVar, cast

    # A decoded frame as its format spells it: the flat tuple (type, *fields, payload).
    Frame = TypeVar("Frame")
else:

    class Generic:
        __slots__ = ()
        __class_getitem__ = classmethod(GenericAlias)

    Frame = None

    def cast(_type: object, value: object) -> object:
        return value


MAX_FIELD = 0xFFFFFFFF


class FrameError(Exception):
    """A malformed, oversized or cut-short frame: the stream cannot go on."""


class Format(Generic[Frame]):
    """One frame layout. KINDS are the frame types it knows; a payload may
    be MAX_PAYLOAD bytes, or less for a type in LIMITS; FIELDS names the
    fixed fields between the type and the length; ERROR is raised for every
    bad frame, so each format's callers catch their own class."""

    def __init__(
        self,
        kinds: Iterable[int],
        max_payload: int,
        *,
        fields: Sequence[str] = (),
        limits: Mapping[int, int] | None = None,
        error: type[FrameError] = FrameError,
    ) -> None:
        self.kinds = frozenset(kinds)
        self.max_payload = max_payload
        self.fields = tuple(fields)
        self.limits = dict(limits or {})
        self.error = error
        self.header = struct.Struct(">B" + "I" * (len(self.fields) + 1))
        if not all(0 <= k <= 0xFF for k in self.kinds) or not set(self.limits) <= self.kinds:
            raise ValueError("frame types are bytes, and only known types have their own limit")
        if not 0 <= max_payload <= MAX_FIELD or any(not 0 <= n <= max_payload for n in self.limits.values()):
            raise ValueError("payload limits must fit the length field and the format's own limit")

    @property
    def max_frame(self) -> int:
        """The largest frame on the wire: a good size for one read."""
        return self.header.size + self.max_payload

    def limit(self, kind: int) -> int:
        """The largest payload a frame of type KIND may carry."""
        return self.limits.get(kind, self.max_payload)

    def check(self, kind: int, length: int) -> None:
        if kind not in self.kinds:
            raise self.error(f"unknown frame type {kind:#x}")
        if length > self.limit(kind):
            raise self.error(f"frame of {length} bytes is over the {self.limit(kind)}-byte limit")

    def encode(self, kind: int, values: tuple[int, ...], payload: bytes) -> bytes:
        """One frame; VALUES are the format's fields, in order."""
        self.check(kind, len(payload))
        if len(values) != len(self.fields):
            raise self.error(f"a frame has {len(self.fields)} fields, not {len(values)}")
        for name, value in zip(self.fields, values, strict=True):
            if not 0 <= value <= MAX_FIELD:
                raise self.error(f"{name} {value} out of range")
        return self.header.pack(kind, *values, len(payload)) + payload

    def parse_header(self, header: bytes | bytearray) -> tuple[int, tuple[int, ...], int]:
        """(type, fields, payload length) of a checked header."""
        kind, *values, length = self.header.unpack(header)
        self.check(kind, length)
        return kind, tuple(values), length


class Decoder(Generic[Frame]):
    """Incremental: feed it bytes as they arrive, get back the whole frames
    among them. A bad frame raises the format's error, and so does every
    later feed: the stream cannot be trusted to resynchronise."""

    def __init__(self, fmt: Format[Frame]) -> None:
        self.format = fmt
        self._head = bytearray()
        self._body = bytearray()
        self._current: tuple[int, tuple[int, ...], int] | None = None

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        pos, size, header_size = 0, len(data), self.format.header.size
        with memoryview(data) as view:
            while True:
                if self._current is None:
                    take = min(header_size - len(self._head), size - pos)
                    self._head += view[pos : pos + take]
                    pos += take
                    if len(self._head) < header_size:
                        return out
                    # Raises before any of the payload is kept; the header
                    # stays, so a later feed fails the same way.
                    self._current = self.format.parse_header(self._head)
                kind, values, length = self._current
                take = min(length - len(self._body), size - pos)
                if not self._body and take == length:
                    payload = bytes(view[pos : pos + take])  # whole in this read: one copy
                else:
                    self._body += view[pos : pos + take]
                    if len(self._body) < length:
                        return out
                    payload = bytes(self._body)
                    self._body.clear()
                pos += take
                out.append(cast(Frame, (kind, *values, payload)))
                self._head.clear()
                self._current = None
                if pos == size:
                    return out

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet whole."""
        return len(self._head) + len(self._body)


def recv_frame(
    sock: socket, decoder: Decoder[Frame], backlog: list[Frame], deadline: float | None = None
) -> Frame | None:
    """The next frame from SOCK (None at a clean end of stream). BACKLOG
    keeps the frames that arrived in the same read, for the next calls.

    With DEADLINE (a time.monotonic() value), the whole frame must arrive
    by then, however slowly its bytes trickle in; else TimeoutError."""
    while not backlog:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the frame did not arrive in time")
            sock.settimeout(left)
        data = sock.recv(decoder.format.max_frame)
        if not data:
            if decoder.pending:
                raise decoder.format.error("connection closed in the middle of a frame")
            return None
        backlog.extend(decoder.feed(data))
    return backlog.pop(0)


# JSON through json's C half (_json): the json package itself imports re,
# enum and functools, ~20 ms of every RPC tool's start inside a qube. The
# result is what json.dumps(obj, separators=(",", ":")) and json.loads give.


class _Decoding:
    """What _json's scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not a JSON value")


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # it reads only these attributes
_ENCODERS = {
    ascii: _json.make_encoder(
        None,
        _not_json,
        _json.encode_basestring_ascii if ascii else _json.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
    for ascii in (True, False)
}
_SPACE = " \t\n\r"


def dumps(obj: object, ascii: bool = True) -> str:
    """OBJ as compact JSON; with ASCII false, non-ASCII text stays as it is."""
    return "".join(_ENCODERS[ascii](obj, 0))


def loads(text: str) -> object:
    """One JSON value (ValueError if TEXT is not exactly one)."""
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        try:
            value, end = _scan(text, start)
        except SystemError:
            # _json reports a syntax error with json.decoder's error class,
            # which it finds only once json.decoder is loaded: load it (on
            # errors only) and scan again, for the error itself.
            __import__("json.decoder")  # json brings re: only a malformed message pays for it

            value, end = _scan(text, start)
    except StopIteration:
        raise ValueError(f"Expecting value: char {start}") from None
    if text[end:].strip(_SPACE):
        raise ValueError(f"Extra data: char {end}")
    return value


def encode_json(obj: dict) -> bytes:
    """A JSON object as a frame payload."""
    return dumps(obj).encode()


def decode_json(payload: bytes, error: type[FrameError] = FrameError) -> dict:
    """A payload that must hold one JSON object; else ERROR."""
    try:
        obj = loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise error("malformed message: not UTF-8") from None
    except RecursionError:  # a few KiB of "[" is enough
        raise error("malformed message: nested too deeply") from None
    except ValueError as exc:
        raise error(f"malformed message: {exc}") from None
    if not isinstance(obj, dict):
        raise error("malformed message: not a JSON object")
    return obj
