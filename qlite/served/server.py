"""The daemon's fork server: runs ``qlite`` commands for the thin client
(qlite.served.client) in processes forked with the CLI already imported.

The daemon forks it before it starts any thread (a fork of a threaded
process may inherit a lock held by a thread that is not copied). It
imports the heavy modules once, listens on run/cli.sock (root only) and,
for each request, forks a worker that takes the client's stdin, stdout,
stderr, working directory and environment and runs the command as
``qlite.cli.main`` would in the client's own process.

The server dies with the daemon, and each worker with the server
(PR_SET_PDEATHSIG): a command never outlives the daemon that serves it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from qlite.paths import Paths
from qlite.served.protocol import FDS, FORWARDED_SIGNALS, MAX_MESSAGE, decode, encode, passed_env_key

PR_SET_PDEATHSIG = 1
REQUEST_TIMEOUT_S = 5.0  # a client that connects sends its request at once
MAX_WORKERS = 512  # beyond this, the client runs the command itself
STOP_TIMEOUT_S = 5.0
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# The CLI is named, not imported: the daemon, which starts this server,
# sits below the CLI in qlite's layers, and the CLI imports the daemon.
CLI = "qlite.cli:main"

# Imported before the first fork, so that no command pays for them: the
# CLI, the lifecycle, podman's client, and what commands.py imports only
# where it is needed. Best effort: a module that fails is imported (and
# fails) in the worker, as it would in-process.
PRELOAD = (
    "qlite.cli",
    "qlite.cli.commands",
    "qlite.domain.context",
    "qlite.domain.preload",
    "qlite.engines.podman",
    "podman",
    "podman.api.client",
    "requests",
    "qlite.core.qubes",
    "qlite.core.disposables",
    "qlite.core.templates",
    "qlite.core.reconcile",
    "qlite.core.usage",
    "qlite.host.daemonctl",
    "qlite.host.volumes",
    "qlite.host.nft",
    "qlite.net.firewall",
    "qlite.net.manager",
    "qlite.devices.manager",
    "qlite.runtime.probe",
    "qlite.rpc.policy",
    "qlite.rpc.broker",
    "qlite.aem.manager",
    "qlite.gpg.splitgpg",
    "qlite.gpg.vault",
)


class RequestError(ValueError):
    """A request the server will not run; its message goes to the client."""


@dataclass(frozen=True)
class Request:
    argv: list[str]
    env: dict[str, str]
    umask: int


def parse_request(line: bytes) -> Request:
    """The request line, validated; RequestError says what is wrong."""
    try:
        message = decode(line)
    except ValueError:
        raise RequestError("malformed request: not a JSON object") from None
    if set(message) - {"argv", "env", "umask"}:
        raise RequestError(f"malformed request: unknown keys {sorted(set(message) - {'argv', 'env', 'umask'})}")
    argv, env, umask = message.get("argv"), message.get("env", {}), message.get("umask", 0o022)
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise RequestError("malformed request: argv must be a non-empty list of strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RequestError("malformed request: env must map strings to strings")
    if not all(passed_env_key(k) for k in env):
        raise RequestError("malformed request: env holds a variable the client does not pass")
    if any("\0" in s for s in (*argv, *env, *env.values())):
        raise RequestError("malformed request: a NUL byte")
    if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
        raise RequestError("malformed request: umask must be 0..0o777")
    return Request(argv, env, umask)


def start(paths: Paths, close: tuple[int, ...] = (), entry: str = CLI) -> int:
    """Fork the fork server for PATHS; its PID. The caller must have no
    other thread yet. CLOSE: fds of the caller's that the server must not
    keep (the daemon's lock). ENTRY ("module:function") runs a command."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        code = Server(paths, parent, entry).run()
    except BaseException as exc:  # noqa: BLE001 - the child must never return into the daemon's code
        with contextlib.suppress(Exception):
            _log(f"fork server failed: {exc!r}")
    finally:
        os._exit(code)


def stop(paths: Paths, pid: int) -> None:
    """Stop the fork server PID (our child) and remove its socket. Its
    workers die with it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done or time.monotonic() >= deadline:
            if not done:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        paths.cli_sock.unlink()


def die_with_parent(parent: int) -> None:
    """SIGTERM when our parent dies; exit now if it already has."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def alive(pid: int) -> bool:
    """Whether PID runs (a zombie has died)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _log(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"{time.strftime('%Y-%m-%d %H:%M:%S')} qlite fork server[{os.getpid()}]: {message}\n".encode())


class Server:
    def __init__(self, paths: Paths, parent: int, entry: str = CLI, log: Callable[[str], None] = _log) -> None:
        self.paths = paths
        self.parent = parent
        self.entry = entry
        self.log = log
        self.workers: dict[int, socket.socket] = {}  # pid -> its client's connection

    def run(self) -> int:
        die_with_parent(self.parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon's Ctrl-C is its to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.preload()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # only to wake the loop
        listener = self.bind()
        self.log(f"serving qlite commands on {self.paths.cli_sock}")
        self.close_in_worker = (listener.fileno(), wake_r, wake_w)
        while True:
            ready, _w, _x = select.select([listener.fileno(), wake_r], [], [], 1.0)
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            self.reap()
            if listener.fileno() in ready:
                with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionAbortedError):
                    conn, _addr = listener.accept()
                    self.serve(conn)

    def preload(self) -> None:
        for name in (self.entry.partition(":")[0], *PRELOAD):
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - a worker imports it again, and reports it as the CLI would
                self.log(f"not preloaded: {name}: {exc}")

    def bind(self) -> socket.socket:
        """Listen on cli.sock, mode 0600, in the home's run directory (the
        daemon holds its lock: a socket already there is a stale one). It
        is bound under another name and renamed once it listens, so that a
        client that finds it is never refused."""
        dirfd = os.open(self.paths.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        name = self.paths.cli_sock.name
        tmp = f".{name}.{os.getpid()}"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dirfd)
            old = os.umask(0o177)
            try:
                s.bind(f"/proc/self/fd/{dirfd}/{tmp}")
            finally:
                os.umask(old)
            s.listen(64)
            os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            s.close()
            raise
        finally:
            os.close(dirfd)
        s.setblocking(False)
        return s

    def reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if not pid:
                return
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            # The worker said its exit code already unless a signal killed it;
            # either way the client takes the first it reads.
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(encode({"exit": code}))
            conn.close()

    def serve(self, conn: socket.socket) -> None:
        """Read CONN's request and fork a worker for it. Whatever goes wrong
        is the client's problem, never the server's."""
        fds: list[int] = []
        handed = False  # to a worker: the server keeps it until the worker is reaped
        try:
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT_S)
            _pid, uid, _gid = UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
            if uid != 0:
                raise RequestError("only root may run qlite commands through the daemon")
            line, rest, fds = receive_request(conn)
            request = parse_request(line)
            fallback = self.fallback(request)
            if fallback:
                conn.sendall(encode({"fallback": fallback}))
                return
            conn.settimeout(None)
            server = os.getpid()
            pid = os.fork()
            if pid == 0:
                self.worker(conn, request, fds, rest, server)  # never returns
            self.workers[pid] = conn
            handed = True
        except RequestError as exc:
            with contextlib.suppress(OSError):
                conn.sendall(encode({"error": str(exc)}))
        except OSError as exc:
            self.log(f"a request failed: {exc}")
        finally:
            for fd in fds:
                os.close(fd)
            if not handed:
                conn.close()

    def fallback(self, request: Request) -> str | None:
        """Why the client had better run REQUEST itself, if it had."""
        if len(self.workers) >= MAX_WORKERS:
            return "the daemon serves too many commands"
        # Read as qlite.paths is imported: the workers have the daemon's.
        if request.env.get("QLITE_SHARE") != os.environ.get("QLITE_SHARE"):
            return "QLITE_SHARE is not the daemon's"
        return None

    def worker(self, conn: socket.socket, request: Request, fds: list[int], rest: bytes, server: int) -> None:
        code = 125
        try:
            die_with_parent(server)
            signal.set_wakeup_fd(-1)
            for fd in self.close_in_worker:
                os.close(fd)
            for other in self.workers.values():
                other.close()  # else its client would not see its command end
            code = run_worker(conn, request, fds, rest, self.entry)
        except BaseException as exc:  # noqa: BLE001 - report it to the client, never return into the server
            with contextlib.suppress(Exception):
                os.write(2, f"qlite: error: the daemon could not run this command: {exc!r}\n".encode())
        finally:
            # A command that ended because the daemon died says so: it may
            # have seen that (a connection of the daemon's ends) before the
            # SIGTERM that comes when the server dies with it.
            outcome: dict[str, object] = {"exit": code}
            if os.getppid() != server or not alive(self.parent):
                outcome["daemon_stopped"] = True
            with contextlib.suppress(Exception):
                conn.sendall(encode(outcome))
            os._exit(code & 0xFF)


def receive_request(conn: socket.socket) -> tuple[bytes, bytes, list[int]]:
    """The request line, what came after it, and the FDS fds sent with it."""
    fds: list[int] = []
    try:
        data, ancdata, flags, _addr = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(FDS * 4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) - len(payload) % 4]))
        if flags & socket.MSG_CTRUNC or len(fds) != FDS:
            raise RequestError(f"malformed request: it must pass {FDS} file descriptors")
        while b"\n" not in data:
            if len(data) > MAX_MESSAGE:
                raise RequestError("malformed request: too long")
            chunk = conn.recv(MAX_MESSAGE)
            if not chunk:
                raise RequestError("malformed request: no end of line")
            data += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    line, _, rest = data.partition(b"\n")
    if len(line) > MAX_MESSAGE:
        for fd in fds:
            os.close(fd)
        raise RequestError("malformed request: too long")
    return line, rest, fds


def run_worker(conn: socket.socket, request: Request, fds: list[int], rest: bytes, entry: str) -> int:
    """In the worker: become the client's process as far as the command can
    tell, and run it; its exit code."""
    for sig in FORWARDED_SIGNALS + (signal.SIGCHLD,):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        os.close(fd)
    _std_streams()
    for key in [k for k in os.environ if passed_env_key(k)]:
        del os.environ[key]
    os.environ.update(request.env)
    os.umask(request.umask)
    threading.Thread(target=_relay_signals, args=(conn, rest), name="qlite-served-signals", daemon=True).start()
    module, _, function = entry.partition(":")
    main = getattr(importlib.import_module(module), function)  # preloaded: no cost

    try:
        code = main(request.argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (125)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
    except KeyboardInterrupt:
        sys.stderr.write("qlite: interrupted\n")
        code = 130
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _std_streams() -> None:
    """sys.stdin/stdout/stderr over the client's fds, buffered as a fresh
    interpreter would buffer them (stdout is line-buffered on a terminal)."""
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=os.isatty(1))


def _relay_signals(conn: socket.socket, rest: bytes) -> None:
    """Deliver the client's forwarded signals to the main thread, as the
    terminal would have to an in-process qlite; SIGHUP when the client is
    gone. This thread takes none of them itself, so that one arriving while
    the command blocks them waits, as it would."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(FORWARDED_SIGNALS))
    main = threading.main_thread().ident
    assert main is not None
    buf = rest
    while True:
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            sig = _signal_of(line)
            if sig is not None:
                signal.pthread_kill(main, sig)
        if len(buf) > MAX_MESSAGE:
            buf = b""
        try:
            chunk = conn.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            signal.pthread_kill(main, signal.SIGHUP)
            return
        buf += chunk


def _signal_of(line: bytes) -> int | None:
    try:
        sig = decode(line).get("signal")
    except ValueError:
        return None
    return sig if isinstance(sig, int) and sig in FORWARDED_SIGNALS else None
