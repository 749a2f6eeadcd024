"""Helpers for the guest-tools tests: the guest tree assembled as template
builds do (so ``qlite_guest.wire`` is the shared codec), and a fake broker
speaking the real wire format over a real Unix socket.

Importing this module assembles the tree once per process into a temporary
directory and puts its dist-packages on sys.path.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qlite.core.guest import assemble
from qlite.rpc import wire

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")  # the services' shebang, as in the template


@dataclass(frozen=True)
class GuestTree:
    root: Path

    @property
    def pythonpath(self) -> Path:
        return self.root / "usr/lib/python3/dist-packages"

    @property
    def rpc_dir(self) -> Path:
        return self.root / "etc/qubes-rpc"

    @property
    def dispatch(self) -> Path:
        return self.root / "usr/lib/qlite/qubes-rpc-dispatch"

    def bin(self, name: str) -> Path:
        return self.root / "usr/bin" / name

    def module(self, name: str):
        return importlib.import_module(f"qlite_guest.{name}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QREXEC_", "QLITE_"))}
        env["PYTHONPATH"] = str(self.pythonpath)
        env.update(extra)
        return env

    def run_tool(
        self,
        name: str,
        *args: str,
        socket_path: Path | str,
        input: bytes = b"",
        cwd: Path | None = None,
        timeout: float = 30,
        **env: str,
    ) -> subprocess.CompletedProcess:
        """Run a guest executable (a script with the test's python) against SOCKET_PATH."""
        path = self.bin(name)
        compiled = path.read_bytes()[:4] == b"\x7fELF"
        return subprocess.run(
            [*([] if compiled else [sys.executable]), str(path), *args],
            input=input,
            capture_output=True,
            env=self.env(QLITE_RPC_SOCKET=str(socket_path), **env),
            cwd=cwd,
            timeout=timeout,
        )


def _build() -> GuestTree:
    root = Path(tempfile.mkdtemp(prefix="qlite-guest-tree-"))
    atexit.register(shutil.rmtree, root, True)
    assemble(REPO / "guest", root)
    sys.path.insert(0, str(root / "usr/lib/python3/dist-packages"))
    return GuestTree(root)


GUEST = _build()


def short_tmpdir() -> Path:
    """A directory with a path short enough for a Unix socket."""
    d = Path(tempfile.mkdtemp(prefix="qg-", dir="/tmp"))
    return d


# -- the fake broker ----------------------------------------------------------------------


class BrokerConn:
    """One accepted connection, seen from the broker's side."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.decoder = wire.Decoder()
        self.backlog: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()

    def recv(self) -> tuple[int, bytes] | None:
        return wire.recv_frame(self.sock, self.decoder, self.backlog)

    def recv_request(self) -> dict:
        frame = self.recv()
        assert frame is not None and frame[0] == wire.REQUEST, frame
        return wire.decode_json(frame[1], wire.MAX_REQUEST)

    def send(self, kind: int, payload: bytes = b"") -> None:
        with self.lock:
            self.sock.sendall(wire.encode(kind, payload))

    def send_json(self, kind: int, obj: dict) -> None:
        with self.lock:
            self.sock.sendall(wire.encode_json(kind, obj))

    def send_raw(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def read_stdin(self) -> bytes:
        """All STDIN payloads up to the empty one (or the end of the connection)."""
        data = bytearray()
        while True:
            frame = self.recv()
            if frame is None:
                return bytes(data)
            kind, payload = frame
            assert kind == wire.STDIN, kind
            if not payload:
                return bytes(data)
            data += payload

    def run(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> int:
        """Run ARGV with its stdio joined to this connection, as the broker does;
        send EXIT; return the code."""
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
        )

        def feed() -> None:
            try:
                while True:
                    frame = self.recv()
                    if frame is None or not frame[1]:
                        break
                    proc.stdin.write(frame[1])
                    proc.stdin.flush()
            except (OSError, wire.WireError):
                pass
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        def drain(stream, kind: int) -> None:
            try:
                while data := stream.read1(wire.MAX_PAYLOAD):
                    self.send(kind, data)
                self.send(kind, b"")
            except OSError:  # the caller went away; keep draining so the service can end
                while stream.read1(wire.MAX_PAYLOAD):
                    pass

        threads = [
            threading.Thread(target=feed, daemon=True),
            threading.Thread(target=drain, args=(proc.stdout, wire.STDOUT), daemon=True),
            threading.Thread(target=drain, args=(proc.stderr, wire.STDERR), daemon=True),
        ]
        for t in threads:
            t.start()
        code = proc.wait(timeout=60)
        for t in threads[1:]:
            t.join(timeout=30)
        try:
            self.send_json(wire.EXIT, {"code": code})
        except OSError:
            pass  # the caller went away
        return code


Handler = Callable[[BrokerConn], None]


@dataclass
class FakeBroker:
    """Listens on PATH; runs HANDLER for every connection in a thread."""

    path: Path
    handler: Handler
    requests: list[dict] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = BrokerConn(sock)
        try:
            self.handler(conn)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.errors.append(exc)
        finally:
            _shutdown(sock)
            sock.close()

    def close(self) -> None:
        # Wake the accept() and wait for its thread before closing: a thread
        # left blocked in accept() on a closed fd was seen taking a later
        # test's connections once that fd number had been reused.
        _shutdown(self.listener)
        self.thread.join(timeout=10)
        self.listener.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or already gone


def allow_running(
    argv_for: Callable[[dict], list[str]],
    env_for: Callable[[dict], dict[str, str]],
    requests: list[dict],
    target: str = "work",
) -> Handler:
    """A handler that allows every call and runs ARGV_FOR(request)."""

    def handler(conn: BrokerConn) -> None:
        request = conn.recv_request()
        requests.append(request)
        conn.send_json(wire.RESULT, {"result": "allow", "target": target})
        conn.run(argv_for(request), env_for(request))

    return handler


def dispatching_broker(
    path: Path, home: Path, source: str = "src-qube", target: str = "work", **service_env: str
) -> FakeBroker:
    """A broker that runs the real dispatcher (and so the real services of the
    assembled tree) locally, with HOME=HOME, as a call from SOURCE."""
    requests: list[dict] = []

    def argv_for(request: dict) -> list[str]:
        arg = request["argument"]
        return [str(GUEST.dispatch), request["service"], *([arg] if arg else [])]

    def env_for(request: dict) -> dict[str, str]:
        full = request["service"] + (f"+{request['argument']}" if request["argument"] else "")
        return GUEST.env(
            HOME=str(home),
            QLITE_RPC_DIRS=str(GUEST.rpc_dir),
            QREXEC_REMOTE_DOMAIN=source,
            QREXEC_SERVICE_ARGUMENT=request["argument"],
            QREXEC_SERVICE_FULL_NAME=full,
            **service_env,
        )

    broker = FakeBroker(path, allow_running(argv_for, env_for, requests, target))
    broker.requests = requests
    return broker


def write_tree(root: Path, tree: dict) -> None:
    """TREE: name -> bytes (a file) or a dict (a directory)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in tree.items():
        if isinstance(value, dict):
            write_tree(root / name, value)
        else:
            (root / name).write_bytes(value)


def read_tree(root: Path) -> dict:
    out: dict = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            out[entry.name] = read_tree(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            out[entry.name] = Path(entry.path).read_bytes()
        else:
            out[entry.name] = ("other", entry.name)
    return out


def json_line(data: bytes) -> dict:
    return json.loads(data.decode().strip().splitlines()[-1])
