"""The ``qlite`` command: a thin client of the daemon's fork server.

Importing the CLI and podman's client costs far more than most commands
take, so when this home's daemon runs, the command is run by a process it
forks with all of that already imported (qlite.served.server). The client
passes its stdin, stdout, stderr and working directory as file
descriptors, forwards the signals a terminal sends it, and exits with the
command's exit code. Without a daemon the command runs here, as before.

What they say is in qlite.served.protocol. This module imports almost
nothing: its own import time is what every served command pays.
"""

from __future__ import annotations

import _signal
import _socket
import _struct
import os
import sys

from qlite.served.protocol import (
    DAEMON_LOG_NAME,
    EXIT_QLITE,
    FDS,
    FORWARDED_SIGNALS,
    MAX_MESSAGE,
    SOCKET_NAME,
    decode,
    encode,
    served_env,
)

DEFAULT_HOME = "/var/lib/qlite"  # Paths.from_env's default (qlite.paths costs ~30 ms)

# Commands that never go through the daemon: the ones that start, stop or
# check it (or the podman service), set the host up, or own the terminal.
IN_PROCESS_COMMANDS = frozenset({"doctor", "setup", "daemon", "service", "tui"})
IN_PROCESS_OPTIONS = frozenset({"-h", "--help", "--version"})


def home_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    return environ.get("QLITE_HOME") or DEFAULT_HOME


def socket_path(home: str) -> str:
    return os.path.join(home, "run", SOCKET_NAME)


def daemon_log(home: str) -> str:
    return os.path.join(home, "log", DAEMON_LOG_NAME)


def served(argv: list[str]) -> bool:
    """Whether ARGV may be served by the daemon (else it runs in-process)."""
    if not argv or argv[0] in IN_PROCESS_OPTIONS:
        return False
    return argv[0] not in IN_PROCESS_COMMANDS


def in_process(argv: list[str]) -> int:
    from qlite.cli import main as cli_main  # noqa: PLC0415 - the whole CLI; only when not served

    return cli_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not served(argv):
        return in_process(argv)
    _ensure_std_fds()  # before any fd we open could take the number of a closed one
    home = home_dir()
    conn = _connect(socket_path(home))
    if conn is None:
        return in_process(argv)
    try:
        sent = _send_request(conn, argv)
        if sent is None:
            return in_process(argv)
        # A request that could not be sent was refused (the server may say
        # why), or not read: either way nothing ran there.
        code = _wait(conn, home) if sent else (_read_outcome(conn, home) or "fallback")
    finally:
        conn.close()
    if code is None:
        _say_daemon_stopped(home)
        return EXIT_QLITE
    if isinstance(code, str):  # run it here after all: nothing was run
        return in_process(argv)
    return code


def _ensure_std_fds() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd, inheritable=True)
                os.close(null)
            else:
                os.set_inheritable(fd, True)


def _connect(path: str) -> _socket.socket | None:
    """A connection to the fork server, or None if none listens."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        conn.connect(path)
    except OSError:  # no daemon, a stale socket, a path too long: run it here
        conn.close()
        return None
    return conn


def _send_request(conn: _socket.socket, argv: list[str]) -> bool | None:
    """Send ARGV with our stdio and working directory: True once sent, False
    if sending failed, None if it cannot be sent at all."""
    try:
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        request = encode({"argv": argv, "env": served_env(os.environ), "umask": umask})
        if len(request) > MAX_MESSAGE:
            return None
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack(f"{FDS}i", 0, 1, 2, cwd))]
        sent = conn.sendmsg([request], rights)
        if sent < len(request):
            conn.sendall(request[sent:])
    except OSError:
        return False
    finally:
        os.close(cwd)
    return True


def _wait(conn: _socket.socket, home: str) -> int | str | None:
    """Forward our signals until the server says how the command ended: its
    exit code, a reason to run it here instead, or None if the connection
    ended without an answer."""

    def forward(signum: int, _frame: object) -> None:
        try:
            conn.sendall(encode({"signal": signum}))
        except OSError:
            pass  # the server is gone; the wait below learns that

    tty = _TerminalState()
    old = {sig: _signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        return _read_outcome(conn, home)
    finally:
        for sig, handler in old.items():
            _signal.signal(sig, handler)
        tty.restore()


def _read_outcome(conn: _socket.socket, home: str) -> int | str | None:
    buf = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            try:
                message = decode(line)
            except ValueError:
                continue
            outcome = _outcome(message, home)
            if outcome is not None:
                return outcome
        if len(buf) > MAX_MESSAGE:
            return None


def _outcome(message: dict[str, object], home: str) -> int | str | None:
    code = message.get("exit")
    if isinstance(code, int) and not isinstance(code, bool):
        if message.get("daemon_stopped"):  # the command ended, but on being stopped with it
            _say_daemon_stopped(home)
        return code
    if isinstance(message.get("fallback"), str):
        return "fallback"
    error = message.get("error")
    if isinstance(error, str):
        os.write(2, f"qlite: error: {error}\n".encode(errors="replace"))
        return EXIT_QLITE
    return None


def _say_daemon_stopped(home: str) -> None:
    os.write(2, f"qlite: the qlite daemon stopped while serving this command; see {daemon_log(home)}\n".encode())


class _TerminalState:
    """Our terminal's modes as they were: a served command may put it in raw
    mode and die before it restores them."""

    def __init__(self) -> None:
        self.saved: list | None = None  # termios attributes
        if os.isatty(0):
            import termios  # noqa: PLC0415 - only for a terminal (~1 ms)

            try:
                self.saved = termios.tcgetattr(0)
            except termios.error:
                pass

    def restore(self) -> None:
        if self.saved is None:
            return
        import termios  # noqa: PLC0415 - imported in __init__ already

        try:
            if termios.tcgetattr(0) != self.saved:
                termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
        except termios.error:
            pass
