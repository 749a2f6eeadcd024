"""qubes.ConnectTCP: a TCP port of another qube, reached over RPC.

qlite-connect-tcp listens on 127.0.0.1 and runs qubes.ConnectTCP+PORT in
the target for each connection; the service connects to 127.0.0.1:PORT in
its qube. Both sides splice bytes as they are, with half-close passed on.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading

SERVICE = "qubes.ConnectTCP"
PORT_RE = re.compile(r"[0-9]{1,5}")
MAX_CONNECTIONS = 64


def parse_port(text: str) -> int | None:
    if not PORT_RE.fullmatch(text):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def parse_spec(spec: str) -> tuple[int, str, int]:
    """'[LOCALPORT:]TARGET:PORT' (Qubes also allows an empty TARGET,
    meaning @default, and an empty LOCALPORT) -> (localport, target, port)."""
    parts = spec.split(":")
    if len(parts) == 2:
        parts.insert(0, "")
    if len(parts) != 3:
        raise ValueError(f"{spec!r}: expected [LOCALPORT:]TARGET:PORT")
    local_text, target, port_text = parts
    port = parse_port(port_text)
    if port is None:
        raise ValueError(f"{port_text!r} is not a port number (1-65535)")
    local = parse_port(local_text) if local_text else port
    if local is None:
        raise ValueError(f"{local_text!r} is not a port number (1-65535)")
    return local, target or "@default", port


# -- the service -----------------------------------------------------------------------


def _copy_in(sock: socket.socket) -> None:
    """stdin -> the TCP connection; EOF becomes a half-close."""
    try:
        while data := os.read(0, 65536):
            sock.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def service_main(argv: list[str], env: dict[str, str] | os._Environ = os.environ) -> int:
    text = argv[1] if len(argv) > 1 else env.get("QREXEC_SERVICE_ARGUMENT", "")
    port = parse_port(text)
    if port is None:
        print(f"qubes.ConnectTCP: {text[:20]!r} is not a port number (1-65535)", file=sys.stderr)
        return 1
    try:
        sock = socket.create_connection(("127.0.0.1", port))
    except OSError as exc:
        print(f"qubes.ConnectTCP: cannot connect to 127.0.0.1:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with sock:
        feeder = threading.Thread(target=_copy_in, args=(sock,), daemon=True)
        feeder.start()
        try:
            while data := sock.recv(65536):
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view):]
        except OSError:
            pass
        # Our stdout's end tells the caller the server is done sending.
        with contextlib.suppress(OSError):
            os.close(1)
        feeder.join()
    return 0


# -- qlite-connect-tcp -----------------------------------------------------------------


def _serve_one(conn: socket.socket, target: str, port: int, slots: threading.BoundedSemaphore) -> None:
    from qlite_guest.client import RpcError, connect, fd_sink, pump  # noqa: PLC0415

    def end_of_output() -> None:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)

    try:
        with connect(target, SERVICE, str(port)) as call:
            code = pump(call, conn.fileno(), fd_sink(conn.fileno()), fd_sink(2, filter_escapes=True),
                        on_stdout_end=end_of_output)
            if code != 0:
                print(f"qlite-connect-tcp: {SERVICE}+{port} in {call.target} exited {code}", file=sys.stderr)
    except RpcError as exc:
        print(f"qlite-connect-tcp: {exc}", file=sys.stderr)
    finally:
        conn.close()
        slots.release()


def main(argv: list[str]) -> int:
    """qlite-connect-tcp [LOCALPORT:]TARGET:PORT"""
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: qlite-connect-tcp [LOCALPORT:]TARGET:PORT\n\n"
              "Listen on 127.0.0.1:LOCALPORT (default PORT) and connect each client to\n"
              "127.0.0.1:PORT in TARGET (empty: @default) over qubes.ConnectTCP. Runs until killed.",
              file=sys.stderr if len(argv) != 1 else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        local, target, port = parse_spec(argv[0])
    except ValueError as exc:
        print(f"qlite-connect-tcp: {exc}", file=sys.stderr)
        return 2
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", local))
        listener.listen(16)
    except OSError as exc:
        print(f"qlite-connect-tcp: cannot listen on 127.0.0.1:{local}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"qlite-connect-tcp: forwarding 127.0.0.1:{local} to {target}:{port}", file=sys.stderr, flush=True)
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    try:
        while True:
            slots.acquire()  # at most MAX_CONNECTIONS at once; the rest wait in the backlog
            conn, _ = listener.accept()
            threading.Thread(target=_serve_one, args=(conn, target, port, slots), daemon=True).start()
    except KeyboardInterrupt:
        return 130
    finally:
        listener.close()
