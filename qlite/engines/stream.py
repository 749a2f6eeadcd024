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
import tty as ttymod
from collections.abc import Callable, Iterator

from qlite.engines.base import Stdio

HEADER = struct.Struct(">BxxxI")
CHUNK = 65536


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
            frames.append((stream, bytes(self._buf[HEADER.size:end])))
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
    # poll, not epoll: epoll refuses regular files (stdin redirected from one).
    sel = selectors.PollSelector()
    sel.register(sock, selectors.EVENT_READ)
    if in_fd is None:
        _close_write(sock)
    else:
        sel.register(in_fd, selectors.EVENT_READ)
    try:
        with raw_terminal(in_fd if stdio.tty else None):
            while True:
                for key, _ in sel.select():
                    if key.fileobj is sock:
                        data = _recv(sock)
                        if not data:
                            return
                        deliver(data)
                    else:
                        data = _read(in_fd)
                        if data:
                            sock.sendall(data)
                        else:
                            sel.unregister(in_fd)
                            _close_write(sock)
    finally:
        sel.close()
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)


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


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(CHUNK)
    except ConnectionResetError:
        return b""


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
