"""The frame codec under the RPC wire format and the agent channel
(qlite.agent.frames): both formats' bytes pinned, round trips split
anywhere, and hostile byte streams, which must end in the format's own
error and never in anything else or in a large allocation."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.agent import channel as ch
from qlite.agent import frames
from qlite.rpc import wire

from .guest_helpers import GUEST, SYSTEM_PYTHON

FORMATS = {"wire": (wire.FORMAT, wire.WireError), "channel": (ch.FORMAT, ch.ChannelError)}


def frame_st(fmt: frames.Format) -> st.SearchStrategy[tuple]:
    """A valid frame of FMT as its decoder returns it: (type, *fields, payload)."""
    return st.sampled_from(sorted(fmt.kinds)).flatmap(
        lambda kind: st.tuples(
            st.just(kind),
            *[st.integers(0, frames.MAX_FIELD)] * len(fmt.fields),
            st.binary(max_size=min(300, fmt.limit(kind))),
        )
    )


def encode(fmt: frames.Format, frame: tuple) -> bytes:
    kind, *values, payload = frame
    return fmt.encode(kind, tuple(values), payload)


def feed_in_pieces(decoder: frames.Decoder, data: bytes, cuts: list[int]) -> list:
    out, prev = [], 0
    for cut in [*sorted(cuts), len(data)]:
        out += decoder.feed(data[prev:cut])
        prev = cut
    return out


# -- the bytes on the wire ------------------------------------------------------------------


def test_both_formats_keep_their_bytes():
    assert wire.HEADER.size == 5 and ch.HEADER.size == 9
    assert wire.encode(wire.STDOUT, b"ab") == b"\x04" + b"\x00\x00\x00\x02" + b"ab"
    assert wire.encode(wire.STDIN) == b"\x02\x00\x00\x00\x00"
    assert wire.encode_json(wire.EXIT, {"code": 3}) == b"\x06\x00\x00\x00\x0a" + b'{"code":3}'
    assert ch.encode(ch.DATA, 0x01020304, b"x") == b"\x16\x01\x02\x03\x04\x00\x00\x00\x01x"


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_round_trip_split_anywhere(name, data):
    fmt, _ = FORMATS[name]
    sent = data.draw(st.lists(frame_st(fmt), max_size=12))
    stream = b"".join(encode(fmt, f) for f in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoder = frames.Decoder(fmt)
    assert feed_in_pieces(decoder, stream, cuts) == sent
    assert decoder.pending == 0


def test_one_byte_at_a_time_and_pending():
    stream = wire.encode(wire.STDOUT, b"hello") + wire.encode(wire.STDOUT)
    ends = [0, wire.HEADER.size + 5, len(stream)]
    decoder, out = wire.Decoder(), []
    for i in range(1, len(stream) + 1):
        out += decoder.feed(stream[i - 1 : i])
        assert decoder.pending == i - max(e for e in ends if e <= i)
    assert out == [(wire.STDOUT, b"hello"), (wire.STDOUT, b"")]
    assert decoder.feed(b"") == [] and decoder.pending == 0


# -- hostile input ----------------------------------------------------------------------------


def mutated_stream(fmt: frames.Format) -> st.SearchStrategy[bytes]:
    """Valid frames with some bytes overwritten, cut short or extended: close
    enough to the format that the decoder gets past the first header."""

    def mutate(args: tuple[bytes, list[tuple[int, int]], int, bytes]) -> bytes:
        stream, flips, cut, tail = args
        buf = bytearray(stream)
        for pos, value in flips:
            if buf:
                buf[pos % len(buf)] = value
        return bytes(buf[:cut] if cut < len(buf) else buf) + tail

    return st.tuples(
        st.lists(frame_st(fmt), max_size=5).map(lambda fs: b"".join(encode(fmt, f) for f in fs)),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
        st.integers(0, 2000),
        st.binary(max_size=20),
    ).map(mutate)


@pytest.mark.parametrize("name", FORMATS)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_bytes_decode_or_raise_the_formats_error(name, data):
    fmt, error = FORMATS[name]
    blob = data.draw(st.one_of(st.binary(max_size=400), mutated_stream(fmt)))
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=6))
    decoder = frames.Decoder(fmt)
    try:
        out = feed_in_pieces(decoder, blob, cuts)
    except error:
        with pytest.raises(error):  # a broken stream stays broken
            decoder.feed(b"\x00" * fmt.header.size)
        return
    # Whatever decoded is exactly the start of the stream, re-encoded.
    consumed = b"".join(encode(fmt, f) for f in out)
    assert blob.startswith(consumed) and decoder.pending == len(blob) - len(consumed)
    assert decoder.pending < fmt.max_frame


@pytest.mark.parametrize("name", FORMATS)
@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=300))
def test_any_payload_is_a_json_object_or_the_formats_error(name, blob):
    _, error = FORMATS[name]
    decode = wire.decode_json if name == "wire" else ch.decode_json
    try:
        assert isinstance(decode(blob), dict)
    except error as exc:
        assert str(exc).startswith(("malformed message", "message of"))


@pytest.mark.parametrize("decode", [wire.decode_json, ch.decode_json])
def test_deep_nesting_is_a_malformed_message(decode):
    with pytest.raises(frames.FrameError, match="nested too deeply"):
        decode(b"[" * 4000)  # fits in a REQUEST


@pytest.mark.parametrize(
    ("name", "kind", "length"),
    [
        ("wire", wire.STDOUT, wire.MAX_PAYLOAD + 1),
        ("wire", wire.REQUEST, wire.MAX_REQUEST + 1),  # a request has a tighter limit
        ("wire", wire.EXIT, frames.MAX_FIELD),
        ("channel", ch.DATA, ch.MAX_PAYLOAD + 1),
        ("channel", ch.OPEN, frames.MAX_FIELD),
    ],
)
def test_an_oversized_frame_is_refused_from_its_header(name, kind, length):
    fmt, error = FORMATS[name]
    header = fmt.header.pack(kind, *[7] * len(fmt.fields), length)
    with pytest.raises(error, match=f"over the {fmt.limit(kind)}-byte limit"):
        frames.Decoder(fmt).feed(header)
    with pytest.raises(error, match="limit"):
        fmt.encode(kind, (7,) * len(fmt.fields), b"\x00" * min(length, fmt.max_payload + 1))


@pytest.mark.parametrize("name", FORMATS)
def test_a_refused_frame_allocates_nothing_for_its_payload(name):
    fmt, error = FORMATS[name]
    kind = max(fmt.kinds)
    # The peer sends the header of a huge frame and a large part of it in one read.
    blob = fmt.header.pack(kind, *[0] * len(fmt.fields), frames.MAX_FIELD) + bytes(8 * 1024 * 1024)
    decoder = frames.Decoder(fmt)
    tracemalloc.start()
    try:
        with pytest.raises(error):
            decoder.feed(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak} bytes allocated for a refused frame"


def test_a_good_frame_holds_no_more_than_itself():
    """Bytes after a frame's end wait as the next frame's header, not as a copy of the read."""
    decoder = ch.Decoder()
    frame = ch.encode(ch.DATA, 1, b"x" * ch.MAX_PAYLOAD)
    assert decoder.feed(frame[:-1]) == [] and decoder.pending == len(frame) - 1
    assert decoder.feed(frame[-1:] + frame[:3]) == [(ch.DATA, 1, b"x" * ch.MAX_PAYLOAD)]
    assert decoder.pending == 3


@pytest.mark.parametrize(
    ("kind", "values", "payload", "message"),
    [
        (0x99, (1,), b"", "unknown frame type 0x99"),
        (ch.DATA, (-1,), b"", "channel -1 out of range"),
        (ch.DATA, (frames.MAX_FIELD + 1,), b"", "out of range"),
        (ch.DATA, (), b"", "has 1 fields, not 0"),
    ],
)
def test_encode_refuses_what_it_cannot_frame(kind, values, payload, message):
    with pytest.raises(ch.ChannelError, match=message):
        ch.FORMAT.encode(kind, values, payload)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kinds": {0x100}, "max_payload": 10},
        {"kinds": {1}, "max_payload": frames.MAX_FIELD + 1},
        {"kinds": {1}, "max_payload": 10, "limits": {1: 11}},
        {"kinds": {1}, "max_payload": 10, "limits": {2: 5}},
    ],
)
def test_a_format_that_could_not_hold_is_a_bug(kwargs):
    with pytest.raises(ValueError):
        frames.Format(**kwargs)


# -- reading from a socket --------------------------------------------------------------------


def test_recv_frame_over_a_socket():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(
            wire.encode(wire.STDOUT, b"a") + wire.encode(wire.STDERR, b"b") + wire.HEADER.pack(wire.STDOUT, 4) + b"12"
        )
        decoder, backlog = wire.Decoder(), []
        assert wire.recv_frame(ours, decoder, backlog) == (wire.STDOUT, b"a")
        assert wire.recv_frame(ours, decoder, backlog) == (wire.STDERR, b"b")
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(wire.WireError, match="middle of a frame"):
            wire.recv_frame(ours, decoder, backlog)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.shutdown(socket.SHUT_WR)
        assert wire.recv_frame(ours, wire.Decoder(), []) is None


def test_recv_frame_deadline_covers_the_whole_frame():
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:
        for byte in wire.encode(wire.STDOUT, b"slow"):
            if stop.wait(0.1):
                return
            theirs.send(bytes([byte]))

    t = threading.Thread(target=trickle, daemon=True)
    with ours, theirs:
        t.start()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            wire.recv_frame(ours, wire.Decoder(), [], deadline=started + 0.35)
        assert time.monotonic() - started < 0.8
        stop.set()
        t.join(timeout=5)


# -- the guest's copy -------------------------------------------------------------------------


def test_the_guest_copies_share_the_guest_codec_without_qlite(tmp_path):
    """In a template there is no qlite package: the two formats must find the
    codec as their sibling, with the template's own python."""
    script = (
        "import sys\n"
        "from qlite_guest import channel, frames, wire\n"
        "assert wire.frames is frames and channel.frames is frames, (wire.frames, channel.frames)\n"
        "assert not [m for m in sys.modules if m == 'qlite' or m.startswith('qlite.')]\n"
        "d = wire.Decoder()\n"
        "assert d.feed(wire.encode(wire.STDOUT, b'ok')) == [(wire.STDOUT, b'ok')]\n"
        "assert channel.Decoder().feed(channel.encode(channel.DATA, 3, b'x')) == [(channel.DATA, 3, b'x')]\n"
        "try:\n"
        "    d.feed(b'\\x99' + bytes(4))\n"
        "except wire.WireError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(GUEST.pythonpath), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "unknown frame type 0x99\n"
