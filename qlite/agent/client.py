"""Running a command over an agent channel: a VM qube's supervisor, a
container qube's agent through the daemon, or a preloaded disposable's
agent."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from qlite.agent import channel as ch
from qlite.engines.base import Stdio
from qlite.engines.stream import raw_terminal, terminal_size
from qlite.errors import EngineError, NotRunning

CONNECT_TIMEOUT_S = 10.0


class AgentUnavailable(NotRunning):
    """The agent could not be reached, and the command was not started."""


def connect(path: Path, qube: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CONNECT_TIMEOUT_S)
    try:
        # Through the directory's descriptor: a path of any length fits in sockaddr_un.
        dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            s.connect(f"/proc/self/fd/{dirfd}/{path.name}")
        finally:
            os.close(dirfd)
    except OSError:
        s.close()
        raise AgentUnavailable(f"qube {qube} is not running (its agent cannot be reached)") from None
    s.settimeout(None)
    return s


def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def _write(stream: object, data: bytes) -> None:
    fd = _fileno(stream)
    if fd is not None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    else:
        stream.write(data)  # type: ignore[attr-defined]
        with contextlib.suppress(AttributeError, OSError):
            stream.flush()  # type: ignore[attr-defined]


def exec_in(path: Path, qube: str, argv: list[str], stdio: Stdio, user: str, cwd: str, env: dict[str, str]) -> int:
    """Run ARGV in the VM qube whose supervisor listens on PATH; its exit code."""
    return exec_over(connect(path, qube), qube, argv, stdio, user, cwd, env)


def exec_over(
    conn: socket.socket, qube: str, argv: list[str], stdio: Stdio, user: str, cwd: str, env: dict[str, str]
) -> int:
    """Run ARGV over CONN, a connection to an agent (through a VM's
    supervisor, or to a preloaded disposable's agent); its exit code."""
    request: dict[str, object] = {"kind": "exec", "argv": argv, "user": user, "cwd": cwd, "env": env, "tty": stdio.tty}
    in_fd = _fileno(stdio.stdin) if stdio.tty else None
    size = _size(in_fd)
    if size is not None:
        request["rows"], request["cols"] = size
    sending = threading.Lock()  # the feeder's frames and the signals' must not interleave
    killed = threading.Event()

    def send_signal(sig: int) -> None:
        if sig == signal.SIGKILL:
            # Hanging up makes the agent kill the command's process group,
            # whatever version of the agent it is.
            killed.set()
            conn.shutdown(socket.SHUT_WR)
            return
        with sending:
            conn.sendall(ch.encode_json(ch.SIGNAL, 0, {"signal": int(sig)}))

    def send_size() -> None:
        now = _size(in_fd)
        if now is not None:
            with sending, contextlib.suppress(OSError):
                conn.sendall(ch.encode_json(ch.RESIZE, 0, {"rows": now[0], "cols": now[1]}))

    relay = stdio.interrupts
    with conn, raw_terminal(in_fd), _on_resize(send_size if size is not None else None):
        conn.sendall(ch.encode_json(ch.OPEN, 0, request))
        if relay is not None:
            relay.attach(send_signal)
        try:
            feeder = threading.Thread(target=_feed, args=(conn, stdio, sending), daemon=True)
            feeder.start()
            return _receive(conn, stdio, qube, killed)
        finally:
            if relay is not None:
                relay.detach()


def _size(fd: int | None) -> tuple[int, int] | None:
    if fd is None or not os.isatty(fd):
        return None
    rows, cols = terminal_size(fd)
    return (rows, cols) if rows > 0 and cols > 0 else None


@contextlib.contextmanager
def _on_resize(send: Callable[[], None] | None) -> Iterator[None]:
    """While a terminal session runs: tell the agent each new window size.
    Signals are the main thread's; elsewhere the first size stands."""
    if send is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGWINCH, lambda _s, _f: send())
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def _feed(conn: socket.socket, stdio: Stdio, sending: threading.Lock) -> None:
    fd = _fileno(stdio.stdin) if stdio.stdin is not None else None
    try:
        while fd is not None or stdio.stdin is not None:
            data = os.read(fd, ch.MAX_PAYLOAD) if fd is not None else stdio.stdin.read(ch.MAX_PAYLOAD)  # type: ignore[union-attr]
            with sending:
                conn.sendall(ch.encode(ch.STDIN, 0, data or b""))
            if not data:
                return
        with sending:
            conn.sendall(ch.encode(ch.STDIN, 0))
    except (OSError, ValueError):
        pass  # the command ended, or our stdin went away


def _receive(conn: socket.socket, stdio: Stdio, qube: str, killed: threading.Event | None = None) -> int:
    decoder = ch.Decoder()
    started = False
    while True:
        data = conn.recv(ch.MAX_PAYLOAD + ch.HEADER.size)
        if not data:
            if killed is not None and killed.is_set():
                return 128 + signal.SIGKILL  # as a shell reports a command killed by SIGKILL
            raise EngineError(f"qube {qube} went away while the command ran")
        try:
            frames = decoder.feed(data)
        except ch.ChannelError as exc:
            raise EngineError(f"qube {qube} sent a malformed frame: {exc}") from None
        for kind, _channel, payload in frames:
            if kind == ch.ERROR and not started:
                message = ch.decode_json(payload)
                if message.get("unavailable") is True:  # nothing ran: another way may be tried
                    raise AgentUnavailable(str(message.get("message", f"the agent of {qube} is not connected")))
            started = True
            if kind == ch.STDOUT and payload:
                _write(stdio.stdout, payload)
            elif kind == ch.STDERR and payload:
                _write(stdio.stderr, payload)
            elif kind == ch.EXIT:
                code = ch.decode_json(payload).get("code")
                if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
                    raise EngineError(f"qube {qube} sent a malformed exit code")
                return code
            elif kind == ch.ERROR:
                raise EngineError(f"in qube {qube}: {ch.decode_json(payload).get('message', 'error')}")
