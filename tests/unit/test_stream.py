"""The multiplexed stdio wire format and the pump over a real socket."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import tempfile
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from qlite.engines.base import Stdio
from qlite.engines.stream import HEADER, FrameDecoder, encode_frame, pump

FRAMES = [(1, b"hello"), (2, b"oops\n"), (1, b""), (0, b"in"), (1, bytes(range(256)) * 3)]


def test_header_format():
    assert encode_frame(2, b"abc") == b"\x02\x00\x00\x00\x00\x00\x00\x03abc"
    assert encode_frame(1, b"") == b"\x01" + b"\x00" * 7
    assert encode_frame(1, b"x" * 70000)[:8] == struct.pack(">BxxxI", 1, 70000)
    assert HEADER.size == 8


def test_decode_whole_stream():
    data = b"".join(encode_frame(s, p) for s, p in FRAMES)
    d = FrameDecoder()
    assert d.feed(data) == FRAMES
    assert d.pending == 0


def test_decode_split_at_every_boundary():
    data = b"".join(encode_frame(s, p) for s, p in FRAMES)
    for split in range(len(data) + 1):
        d = FrameDecoder()
        out = d.feed(data[:split])
        out += d.feed(data[split:])
        assert out == FRAMES, split
        assert d.pending == 0, split


def test_decode_split_twice_at_every_pair_of_boundaries():
    data = b"".join(encode_frame(s, p) for s, p in [(1, b"ab"), (2, b""), (1, b"cdef")])
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            d = FrameDecoder()
            out = d.feed(data[:i]) + d.feed(data[i:j]) + d.feed(data[j:])
            assert out == [(1, b"ab"), (2, b""), (1, b"cdef")], (i, j)


def test_decode_byte_by_byte():
    data = b"".join(encode_frame(s, p) for s, p in FRAMES)
    d = FrameDecoder()
    out = []
    for i in range(len(data)):
        out += d.feed(data[i : i + 1])
    assert out == FRAMES and d.pending == 0


def test_incomplete_frame_stays_pending():
    d = FrameDecoder()
    frame = encode_frame(1, b"abcdef")
    assert d.feed(frame[:-1]) == []
    assert d.pending == len(frame) - 1
    assert d.feed(frame[-1:]) == [(1, b"abcdef")]


frames_st = st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.binary(max_size=300)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(frames=frames_st, data=st.data())
def test_encode_decode_roundtrip_in_random_chunks(frames, data):
    wire = b"".join(encode_frame(s, p) for s, p in frames)
    d = FrameDecoder()
    out = []
    pos = 0
    while pos < len(wire):
        n = data.draw(st.integers(1, max(1, len(wire) - pos)))
        out += d.feed(wire[pos : pos + n])
        pos += n
    out += d.feed(b"")
    assert out == frames
    assert d.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_garbage(blob):
    d = FrameDecoder()
    for stream, payload in d.feed(blob):
        assert 0 <= stream <= 255 and isinstance(payload, bytes)
    assert d.pending <= len(blob)


# -- pump over a socketpair -------------------------------------------------------


class FakeEngineSide:
    """The engine end of a hijacked connection: it reads what pump sends
    until EOF, then writes SCRIPT frames and closes."""

    def __init__(self, sock: socket.socket, script: list[tuple[int, bytes]], write_first: bool = False):
        self.sock = sock
        self.script = script
        self.write_first = write_first
        self.received = b""
        self.got_eof = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.write_first:
                self._write()
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.got_eof = True
                    break
                self.received += chunk
            if not self.write_first:
                # Still writable after pump's EOF: that was a half-close.
                self._write()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc
        finally:
            self.sock.close()

    def _write(self) -> None:
        for stream, payload in self.script:
            self.sock.sendall(encode_frame(stream, payload))

    def join(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive(), "engine side hung"
        assert self.error is None, self.error


def run_pump(stdin, script, initial: bytes = b"", write_first: bool = False):
    ours, theirs = socket.socketpair()
    engine = FakeEngineSide(theirs, script, write_first)
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    done = threading.Event()
    box: dict = {}

    def go() -> None:
        try:
            pump(ours, Stdio(stdin=stdin, stdout=out, stderr=err), initial)
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc
        finally:
            done.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    assert done.wait(10), "pump hung"
    ours.close()
    engine.join()
    assert "exc" not in box, box.get("exc")
    out.seek(0)
    err.seek(0)
    return engine, out.read(), err.read()


SCRIPT = [(1, b"out-1 "), (2, b"err-1 "), (1, b"out-2"), (2, b"err-2"), (1, b"")]


def test_pump_with_stdin_from_a_pipe():
    r, w = os.pipe()
    os.write(w, b"some input\n" * 1000)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as stdin:
        engine, out, err = run_pump(stdin, SCRIPT)
    assert engine.received == b"some input\n" * 1000
    assert engine.got_eof  # stdin EOF reached the engine as a half-close...
    assert out == b"out-1 out-2"  # ...and output still flowed back after it
    assert err == b"err-1 err-2"


def test_pump_with_stdin_from_a_regular_file():
    with tempfile.TemporaryFile() as stdin:
        stdin.write(b"file contents " * 5000)
        stdin.seek(0)
        engine, out, err = run_pump(stdin, SCRIPT)
    assert engine.received == b"file contents " * 5000
    assert engine.got_eof
    assert (out, err) == (b"out-1 out-2", b"err-1 err-2")


def test_pump_with_no_stdin_sends_eof_at_once():
    engine, out, err = run_pump(None, SCRIPT)
    assert engine.received == b""
    assert engine.got_eof
    assert (out, err) == (b"out-1 out-2", b"err-1 err-2")


def test_pump_with_an_empty_pipe():
    r, w = os.pipe()
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as stdin:
        engine, out, err = run_pump(stdin, SCRIPT)
    assert engine.received == b"" and engine.got_eof
    assert out == b"out-1 out-2"


def test_pump_delivers_initial_bytes_first():
    initial = encode_frame(1, b"early ") + encode_frame(2, b"warn ")[:5]  # ends mid-header
    rest_of_warn = encode_frame(2, b"warn ")[5:]
    ours, theirs = socket.socketpair()

    def engine() -> None:
        theirs.recv(10)  # EOF from the None stdin
        theirs.sendall(rest_of_warn + encode_frame(1, b"late"))
        theirs.close()

    t = threading.Thread(target=engine, daemon=True)
    t.start()
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pump(ours, Stdio(stdin=None, stdout=out, stderr=err), initial)
    t.join(10)
    ours.close()
    out.seek(0)
    err.seek(0)
    assert out.read() == b"early late"
    assert err.read() == b"warn "


def test_pump_tty_mode_passes_raw_bytes():
    ours, theirs = socket.socketpair()

    def engine() -> None:
        theirs.recv(10)
        theirs.sendall(b"\x01\x00\x00\x00raw terminal bytes")
        theirs.close()

    t = threading.Thread(target=engine, daemon=True)
    t.start()
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pump(ours, Stdio(stdin=None, stdout=out, stderr=err, tty=True))
    t.join(10)
    ours.close()
    out.seek(0)
    err.seek(0)
    assert out.read() == b"\x01\x00\x00\x00raw terminal bytes"
    assert err.read() == b""


def test_pump_survives_a_closed_stdout_reader():
    """A reader that went away (head -1) must not abort the pump."""
    r, w = os.pipe()
    os.close(r)
    ours, theirs = socket.socketpair()

    def engine() -> None:
        theirs.recv(10)
        theirs.sendall(encode_frame(1, b"x" * 100) + encode_frame(1, b"y"))
        theirs.close()

    t = threading.Thread(target=engine, daemon=True)
    t.start()
    err = tempfile.TemporaryFile()
    with os.fdopen(w, "wb", buffering=0) as stdout:
        pump(ours, Stdio(stdin=None, stdout=stdout, stderr=err))
    t.join(10)
    ours.close()


def test_pump_does_not_deadlock_when_output_outgrows_input():
    """The engine side behaves like `base64` or `xxd` in a qube: it answers
    every chunk of stdin with more output than it read, and it writes that
    output before it reads more (a process with bounded pipe buffers). pump
    must keep draining the output while stdin is still being sent."""
    ours, theirs = socket.socketpair()
    stop = threading.Event()

    def engine() -> None:
        try:
            while not stop.is_set():
                chunk = theirs.recv(65536)
                if not chunk:
                    break
                theirs.sendall(encode_frame(1, chunk) + encode_frame(1, chunk))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                theirs.shutdown(socket.SHUT_WR)

    size = 4 << 20
    stdin = tempfile.TemporaryFile()
    stdin.write(os.urandom(size))
    stdin.seek(0)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    box: dict = {}

    def go() -> None:
        try:
            pump(ours, Stdio(stdin=stdin, stdout=out, stderr=err))
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc

    te = threading.Thread(target=engine, daemon=True)
    tp = threading.Thread(target=go, daemon=True)
    te.start()
    tp.start()
    tp.join(3)
    hung = tp.is_alive()
    # Unblock both sides whatever happened, so no thread outlives the test.
    stop.set()
    for s in (ours, theirs):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
    tp.join(5)
    te.join(5)
    out_size = os.fstat(out.fileno()).st_size
    for f in (ours, theirs, stdin, out, err):
        f.close()
    assert not hung, "pump deadlocked: blocked sending stdin while the engine waited for it to read output"
    assert "exc" not in box, box.get("exc")
    assert out_size == 2 * size


# -- pump_process: stdio through a child's pipes (runsc exec) ---------------------------


def _run_piped(argv: list[str], data: bytes) -> tuple[int, bytes, bytes, bytes]:
    import subprocess

    from qlite.engines.stream import pump_process

    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        fin.write(data)
        fin.seek(0)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        tail = bytearray()
        code = pump_process(proc, Stdio(stdin=fin, stdout=fout, stderr=ferr), tail)
        fout.seek(0)
        ferr.seek(0)
        return code, fout.read(), ferr.read(), bytes(tail)


def test_pump_process_passes_stdio_and_the_exit_code():
    code, out, err, tail = _run_piped(["sh", "-c", "tr a-z A-Z; echo oops >&2; exit 3"], b"hello\n")
    assert (code, out, err, tail) == (3, b"HELLO\n", b"oops\n", b"oops\n")


def test_pump_process_does_not_deadlock_on_more_output_than_input():
    data = os.urandom(3 << 20)
    code, out, _err, _tail = _run_piped(["sh", "-c", "cat; cat /dev/zero | head -c 4000000"], data)
    assert code == 0 and out[: len(data)] == data and len(out) == len(data) + 4000000


def test_pump_process_survives_a_command_that_ignores_its_stdin():
    code, out, _err, tail = _run_piped(["sh", "-c", "echo done; yes x | head -c 2000 >&2"], os.urandom(1 << 20))
    assert code == 0 and out == b"done\n" and len(tail) == 512  # only the last bytes are kept
