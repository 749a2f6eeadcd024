"""The calling side of qlite's RPC: connect to the broker, send REQUEST,
read RESULT, then pump stdin to STDIN frames and STDOUT/STDERR frames out
until EXIT (docs/rpc.md).

``connect`` opens a call; ``pump`` runs it. Sources and sinks are plain fds,
iterators and callables, so the same loop serves qrexec-client-vm, the file
copier, open-in-dvm and the TCP forwarder.
"""

from __future__ import annotations

import os
import select
import selectors
import sys

# _socket, not socket: socket.py turns _socket's constants into enums as it
# is imported, which costs a Python start in a qube more than this module.
from _socket import AF_UNIX, SOCK_STREAM, socket
from collections.abc import Callable, Iterable, Iterator

from qlite_guest import wire
from qlite_guest.names import argument_problem, printable, service_problem

SOCKET_ENV = "QLITE_RPC_SOCKET"
DEFAULT_SOCKET = "/run/qlite/rpc.sock"

EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127
# The call itself failed: broker unreachable, ERROR frame, broken connection.
EXIT_RPC_FAILED = 125

# Outgoing bytes buffered before we stop reading our own stdin (backpressure).
HIGH_WATER = 4 * (wire.MAX_PAYLOAD + wire.HEADER.size)

Sink = Callable[[bytes], None]
Source = int | Iterator[bytes] | None


class RpcError(Exception):
    """The call failed on the way (not the service): one-line message."""

    code = EXIT_RPC_FAILED


class Refused(RpcError):
    """The broker refused the call (policy, the user, the ask timeout)."""

    def __init__(self, message: str, code: int = EXIT_REFUSED):
        super().__init__(message)
        self.code = code


def socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def split_service(spec: str) -> tuple[str, str]:
    """'SERVICE+ARG' -> (SERVICE, ARG); the argument may hold further '+'."""
    service, _, argument = spec.partition("+")
    return service, argument


def normalize_target(target: str) -> str:
    # Qubes still accepts the pre-4.0 spelling '$dispvm' for '@dispvm'.
    return "@" + target[1:] if target.startswith("$") else target


class Call:
    """An allowed call: the socket, and frames already read past RESULT."""

    def __init__(self, sock: socket, target: str, decoder: wire.Decoder,
                 backlog: list[tuple[int, bytes]]):
        self.sock = sock
        self.target = target
        self.decoder = decoder
        self.backlog = backlog

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(target: str, service: str, argument: str = "", path: str | None = None) -> Call:
    """Send REQUEST and wait for the verdict (an ask may take a while).

    Returns the allowed Call; raises Refused or RpcError."""
    problem = service_problem(service) or argument_problem(argument)
    if problem:
        raise RpcError(problem)
    target = normalize_target(target)
    path = path or socket_path()
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise RpcError(f"cannot reach the qlite broker at {path}: {exc.strerror or exc}") from None
        request = {"version": wire.VERSION, "target": target, "service": service, "argument": argument}
        decoder: wire.Decoder = wire.Decoder()
        backlog: list[tuple[int, bytes]] = []
        try:
            sock.sendall(wire.encode_json(wire.REQUEST, request))
            frame = wire.recv_frame(sock, decoder, backlog)
        except wire.WireError as exc:
            raise RpcError(f"broken answer from the broker: {exc}") from None
        except OSError as exc:
            raise RpcError(f"lost the connection to the broker: {exc.strerror or exc}") from None
        if frame is None:
            raise RpcError("the broker closed the connection without answering")
        kind, payload = frame
        if kind == wire.ERROR:
            raise RpcError(_error_message(payload))
        if kind != wire.RESULT:
            raise RpcError(f"unexpected frame {kind:#x} instead of the broker's answer")
        try:
            result = wire.decode_json(payload)
        except wire.WireError as exc:
            raise RpcError(f"broken answer from the broker: {exc}") from None
        if result.get("result") == "allow":
            resolved = result.get("target")
            return Call(sock, resolved if isinstance(resolved, str) and resolved else target, decoder, backlog)
        code = result.get("code")
        message = result.get("message")
        raise Refused(printable(message) if isinstance(message, str) and message else "request refused",
                      code if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 256
                      else EXIT_REFUSED)
    except BaseException:
        sock.close()
        raise


def _error_message(payload: bytes) -> str:
    try:
        message = wire.decode_json(payload).get("message")
    except wire.WireError:
        message = None
    return "qlite RPC error: " + (printable(message) if isinstance(message, str) else "(no message)")


def _exit_code(payload: bytes) -> int:
    try:
        code = wire.decode_json(payload).get("code")
    except wire.WireError as exc:
        raise RpcError(f"broken EXIT frame: {exc}") from None
    if not isinstance(code, int) or isinstance(code, bool):
        raise RpcError("broken EXIT frame: no integer code")
    if code < 0:  # killed by a signal, as a shell would report it
        return min(128 - code, 255)
    return min(code, 255)


def pump(call: Call, source: Source, on_stdout: Sink, on_stderr: Sink,
         on_stdout_end: Callable[[], None] | None = None, prefix: Iterable[bytes] = ()) -> int:
    """Run CALL to its end; return the service's exit code.

    SOURCE feeds the service's stdin: an fd (read until EOF), an iterator of
    byte chunks, or None (stdin closed at once). With an fd, PREFIX chunks
    go first (a request header, say); the fd is read only after them.
    Stdout and stderr go to the sinks as they arrive. Raises RpcError if the
    call breaks; exceptions from SOURCE or the sinks propagate (the caller
    then closes the socket)."""
    sock = call.sock
    sock.setblocking(False)
    out = bytearray()
    fd = source if isinstance(source, int) else None
    chunks = None if source is None or isinstance(source, int) else source
    lead = iter(prefix) if fd is not None else None
    feeding = source is not None
    send_broken = False
    if not feeding:
        out += wire.encode(wire.STDIN)
    # poll, not epoll: stdin may be a regular file or /dev/null.
    sel = selectors.PollSelector()
    sel.register(sock, selectors.EVENT_READ)
    fd_registered = False

    def queue(data: bytes) -> None:
        for i in range(0, len(data), wire.MAX_PAYLOAD):
            out.extend(wire.encode(wire.STDIN, data[i:i + wire.MAX_PAYLOAD]))

    def stop_feeding() -> None:
        nonlocal feeding, fd_registered
        feeding = False
        if fd_registered and fd is not None:
            sel.unregister(fd)
            fd_registered = False

    def handle(kind: int, payload: bytes) -> int | None:
        if kind == wire.STDOUT:
            if payload:
                on_stdout(payload)
            elif on_stdout_end is not None:
                on_stdout_end()
        elif kind == wire.STDERR:
            if payload:
                on_stderr(payload)
        elif kind == wire.EXIT:
            return _exit_code(payload)
        elif kind == wire.ERROR:
            raise RpcError(_error_message(payload))
        else:
            raise RpcError(f"unexpected frame {kind:#x} from the broker")
        return None

    try:
        while call.backlog:
            code = handle(*call.backlog.pop(0))
            if code is not None:
                return code
        while True:
            if feeding and chunks is not None:
                while feeding and len(out) < HIGH_WATER:
                    chunk = next(chunks, None)
                    if chunk is None:
                        out += wire.encode(wire.STDIN)
                        stop_feeding()
                    elif chunk:
                        queue(chunk)
            while feeding and lead is not None and len(out) < HIGH_WATER:
                chunk = next(lead, None)
                if chunk is None:
                    lead = None
                else:
                    queue(chunk)
            if feeding and fd is not None and lead is None:
                want = len(out) < HIGH_WATER
                if want and not fd_registered:
                    sel.register(fd, selectors.EVENT_READ)
                    fd_registered = True
                elif not want and fd_registered:
                    sel.unregister(fd)
                    fd_registered = False
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out and not send_broken else 0)
            sel.modify(sock, events)
            for key, mask in sel.select():
                if key.fileobj is sock:
                    if mask & selectors.EVENT_WRITE:
                        try:
                            sent = sock.send(out)
                            del out[:sent]
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            # The broker stopped taking stdin (the service closed
                            # it): keep reading until EXIT.
                            send_broken = True
                            out.clear()
                            stop_feeding()
                    if mask & selectors.EVENT_READ:
                        try:
                            data = sock.recv(wire.MAX_PAYLOAD + wire.HEADER.size)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except ConnectionResetError:
                            # A broker that closes with our stdin unread resets
                            # the socket: that is its end of stream.
                            data = b""
                        except OSError as exc:
                            raise RpcError(f"lost the connection to the broker: {exc.strerror or exc}") from None
                        if not data:
                            if call.decoder.pending:
                                raise RpcError("the broker closed the connection in the middle of a frame")
                            raise RpcError("the broker closed the connection before the service's exit code")
                        try:
                            frames = call.decoder.feed(data)
                        except wire.WireError as exc:
                            raise RpcError(f"broken frame from the broker: {exc}") from None
                        for frame in frames:
                            code = handle(*frame)
                            if code is not None:
                                return code
                else:
                    assert fd is not None  # only its events come here
                    try:
                        data = os.read(fd, wire.MAX_PAYLOAD)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if data:
                        queue(data)
                    else:
                        out += wire.encode(wire.STDIN)
                        stop_feeding()
    finally:
        sel.close()
        if chunks is not None and hasattr(chunks, "close"):
            chunks.close()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


# Bytes a terminal would act on: C0 controls except TAB, LF and CR, and DEL.
_ESCAPES = bytes(b for b in range(32) if b not in (9, 10, 13)) + b"\x7f"
_FILTER = bytes.maketrans(_ESCAPES, b"_" * len(_ESCAPES))


def fd_sink(fd: int, filter_escapes: bool = False) -> Sink:
    """A sink writing to FD. A closed reader (EPIPE) drops the rest quietly,
    so a `| head` does not break the call."""
    broken = False

    def sink(data: bytes) -> None:
        nonlocal broken
        if broken:
            return
        if filter_escapes:
            data = data.translate(_FILTER)
        try:
            write_all(fd, data)
        except OSError:
            broken = True

    return sink


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _stdin_source() -> Source:
    try:
        os.fstat(0)
    except OSError:
        return None
    return 0


USAGE = "usage: {prog} [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]"
HELP = """\
Call the qlite RPC service SERVICE (with optional argument ARG) in TARGET
(a qube name, @default, @dispvm, @dispvm:NAME or dom0). The broker's policy
decides. Without LOCAL_PROGRAM, this program's stdin/stdout/stderr are joined
to the service's; with one, the program's stdout feeds the service's stdin and
the service's stdout feeds the program's stdin.

options:
  --filter-escape-chars-stdout / --no-filter-escape-chars-stdout
  --filter-escape-chars-stderr / --no-filter-escape-chars-stderr
        replace terminal control characters from the service with '_'
        (default: on when the output is a terminal)
  --buffer-size=N   accepted for Qubes compatibility; ignored

exit: the service's code; 126 refused; 127 no such service; 125 the call failed."""


def main(argv: list[str], prog: str = "qrexec-client-vm") -> int:
    """qrexec-client-vm TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]"""
    filters: dict[str, bool | None] = {"stdout": None, "stderr": None}
    args = list(argv)
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt == "--":
            break
        if opt in ("-h", "--help"):
            print(USAGE.format(prog=prog) + "\n\n" + HELP)
            return 0
        if opt.startswith("--buffer-size="):
            continue
        matched = False
        for stream in filters:
            if opt == f"--filter-escape-chars-{stream}":
                filters[stream], matched = True, True
            elif opt == f"--no-filter-escape-chars-{stream}":
                filters[stream], matched = False, True
        if not matched:
            print(f"{prog}: unknown option {opt}\n" + USAGE.format(prog=prog), file=sys.stderr)
            return 2
    if len(args) < 2:
        print(USAGE.format(prog=prog), file=sys.stderr)
        return 2
    target, spec, program = args[0], args[1], args[2:]
    service, argument = split_service(spec)
    problem = service_problem(service) or argument_problem(argument)
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    try:
        call = connect(target, service, argument)
    except Refused as exc:
        print(f"{prog}: request refused: {exc}", file=sys.stderr)
        return exc.code
    except RpcError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    with call:
        try:
            if program:
                return _run_with_program(call, program, prog, filters["stderr"])
            out_filter = filters["stdout"] if filters["stdout"] is not None else _isatty(1)
            err_filter = filters["stderr"] if filters["stderr"] is not None else _isatty(2)
            return pump(call, _stdin_source(), fd_sink(1, out_filter), fd_sink(2, err_filter))
        except RpcError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return exc.code


def _run_with_program(call: Call, program: list[str], prog: str, err_filter: bool | None) -> int:
    """The local program talks to the service; its stderr stays ours."""
    # Here, not at the top: every call starts a Python, and few calls run a
    # local program.
    import contextlib  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    try:
        proc = subprocess.Popen(program, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as exc:
        print(f"{prog}: cannot run {program[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126  # as a shell reports it
    assert proc.stdin is not None and proc.stdout is not None
    program_stdin = proc.stdin
    to_program = program_stdin.fileno()

    def close_program_stdin() -> None:
        with contextlib.suppress(OSError):
            program_stdin.close()

    try:
        code = pump(call, proc.stdout.fileno(), fd_sink(to_program),
                    fd_sink(2, err_filter if err_filter is not None else _isatty(2)),
                    on_stdout_end=close_program_stdin)
    finally:
        # Closing both pipes first means a program still writing gets EPIPE
        # instead of blocking us forever.
        close_program_stdin()
        proc.stdout.close()
        local = proc.wait()
    if code == 0 and local != 0:
        # Never report success when the local half failed.
        return 128 - local if local < 0 else local
    return code
