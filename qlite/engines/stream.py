"""Pass a command's stdio through a hijacked engine connection.

Both podman's libpod API and the Docker API hand over the raw connection
after an attach or exec start. Without a TTY the output is multiplexed in
8-byte-header frames (stream id, 3 zero bytes, big-endian length); with a
TTY it is a raw byte stream. Closing our write side tells the engine that
stdin reached EOF.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import struct
import termios
import threading
import tty as ttymod
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from qlite.engines.base import Stdio

if TYPE_CHECKING:
    import subprocess

HEADER = struct.Struct(">BxxxI")
CHUNK = 65536
TAIL_BYTES = 512


class FrameDecoder:
    """Incremental decoder of the engines' multiplexed stdout/stderr stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Return the complete (stream id, payload) frames DATA finishes."""
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            stream, length = HEADER.unpack_from(self._buf)
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((stream, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


def encode_frame(stream: int, payload: bytes) -> bytes:
    return HEADER.pack(stream, len(payload)) + payload


def terminal_size(fd: int) -> tuple[int, int]:
    size = os.get_terminal_size(fd)
    return size.lines, size.columns


@contextlib.contextmanager
def raw_terminal(fd: int | None) -> Iterator[None]:
    """Put a local terminal in raw mode for a TTY session; restore after."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def pump(
    sock: socket.socket,
    stdio: Stdio,
    initial: bytes = b"",
    resize: Callable[[int, int], None] | None = None,
) -> None:
    """Copy stdin to SOCK and SOCK to stdout/stderr until the engine closes it."""
    in_fd = _fileno(stdio.stdin)
    out_fd = _fileno(stdio.stdout)
    err_fd = _fileno(stdio.stderr)
    decoder = None if stdio.tty else FrameDecoder()

    def write_out(stream: int, data: bytes) -> None:
        target = err_fd if stream == 2 else out_fd
        if target is None:
            return
        try:
            _write_all(target, data)
        except BrokenPipeError:
            pass  # the reader went away; keep draining so the command finishes

    def deliver(data: bytes) -> None:
        if decoder is None:
            write_out(1, data)
        else:
            for stream, payload in decoder.feed(data):
                write_out(stream, payload)

    _flush(stdio.stdout)
    _flush(stdio.stderr)
    old_winch = None
    if stdio.tty and resize and in_fd is not None and os.isatty(in_fd):

        def on_winch(_sig: int, _frame: object) -> None:
            with contextlib.suppress(Exception):
                resize(*terminal_size(in_fd))

        old_winch = signal.signal(signal.SIGWINCH, on_winch)
        with contextlib.suppress(Exception):
            resize(*terminal_size(in_fd))

    if initial:
        deliver(initial)
    try:
        with raw_terminal(in_fd if stdio.tty else None):
            _Loop(sock, in_fd, deliver).run()
    finally:
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)


class _Loop:
    """Copy stdin to the socket and the socket to DELIVER without blocking
    on either: a command that writes more than it reads must not deadlock
    against our own unsent stdin. While stdin data waits for the socket,
    stdin is not read (backpressure)."""

    def __init__(self, sock: socket.socket, in_fd: int | None, deliver: Callable[[bytes], None]) -> None:
        self.sock = sock
        self.in_fd = in_fd
        self.deliver = deliver
        self.pending = b""
        self.stdin_done = in_fd is None
        # poll, not epoll: epoll refuses regular files (stdin redirected from one).
        self.sel = selectors.PollSelector()
        self.reading_stdin = False

    def run(self) -> None:
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ)
        if self.stdin_done:
            _close_write(self.sock)
        try:
            self._update()
            while True:
                for key, events in self.sel.select():
                    if key.fileobj is self.sock:
                        if events & selectors.EVENT_READ and not self._on_readable():
                            return
                        if events & selectors.EVENT_WRITE:
                            self._send()
                    else:
                        self._on_stdin()
                self._update()
        finally:
            self.sel.close()

    def _on_readable(self) -> bool:
        try:
            data = self.sock.recv(CHUNK)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False
        self.deliver(data)
        return True

    def _on_stdin(self) -> None:
        assert self.in_fd is not None
        data = _read(self.in_fd)
        if data:
            self.pending += data
        else:
            self.stdin_done = True
            if not self.pending:
                _close_write(self.sock)

    def _send(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            # The command closed its stdin; what is left cannot be delivered.
            self.pending, self.stdin_done = b"", True
            return
        self.pending = self.pending[sent:]
        if not self.pending and self.stdin_done:
            _close_write(self.sock)

    def _update(self) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.pending else 0)
        self.sel.modify(self.sock, events)
        want_stdin = not self.stdin_done and not self.pending
        if self.in_fd is None:  # then stdin_done from the start
            return
        if want_stdin and not self.reading_stdin:
            self.sel.register(self.in_fd, selectors.EVENT_READ)
        elif not want_stdin and self.reading_stdin:
            self.sel.unregister(self.in_fd)
        self.reading_stdin = want_stdin


def _fileno(stream: object) -> int | None:
    if stream is None:
        return None
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def _flush(stream: object) -> None:
    with contextlib.suppress(Exception):
        stream.flush()  # type: ignore[attr-defined]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, CHUNK)
    except OSError as exc:
        if exc.errno in (errno.EIO, errno.EBADF):
            return b""
        raise


def _close_write(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def pump_process(proc: subprocess.Popen[bytes], stdio: Stdio, err_tail: bytearray | None = None) -> int:
    """Pass STDIO through the pipes of PROC (a subprocess.Popen with stdin,
    stdout and stderr pipes) until its output ends; its exit code. Each
    stream has its own thread, so a command that writes more than it reads
    cannot deadlock against our unsent stdin. ERR_TAIL, if given, keeps the
    last bytes of stderr."""
    in_fd, out_fd, err_fd = _fileno(stdio.stdin), _fileno(stdio.stdout), _fileno(stdio.stderr)
    _flush(stdio.stdout)
    _flush(stdio.stderr)

    def feed() -> None:
        assert proc.stdin is not None  # PROC has a stdin pipe, as the docstring says
        with contextlib.suppress(OSError, ValueError):
            while in_fd is not None and (data := _read(in_fd)):
                _write_all(proc.stdin.fileno(), data)
        with contextlib.suppress(OSError):
            proc.stdin.close()

    def drain(src: IO[bytes], target: int | None, tail: bytearray | None) -> None:
        while data := _read(src.fileno()):
            if tail is not None:
                tail += data
                del tail[:-TAIL_BYTES]
            if target is not None:
                try:
                    _write_all(target, data)
                except BrokenPipeError:
                    target = None  # the reader went away; keep draining so the command finishes

    threading.Thread(target=feed, daemon=True).start()
    readers = [
        threading.Thread(target=drain, args=(src, fd, tail), daemon=True)
        for src, fd, tail in ((proc.stdout, out_fd, None), (proc.stderr, err_fd, err_tail))
    ]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    return proc.wait()
