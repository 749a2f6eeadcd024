"""The broker's limits against a hostile qube (docs/rpc.md, "Limits").

A qube's root controls its RPC directory and may connect to its socket as
often as it likes. These tests play that qube, over real Unix sockets in a
temporary home: a request trickled in byte by byte, a flood of connections,
a flood of questions, and rpc.sock swapped for something else.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qlite.core.lifecycle import Lifecycle
from qlite.core.qubes import QubeManager
from qlite.errors import AccessDenied
from qlite.paths import Paths
from qlite.rpc import asks as asks_mod
from qlite.rpc import audit, wire
from qlite.rpc import broker as broker_mod
from qlite.rpc.asks import AskQueue
from qlite.rpc.broker import Broker, Call
from qlite.rpc.policy import Resolution

from .conftest import insert_row

WAIT_S = 5.0


@pytest.fixture
def paths() -> Paths:
    """A home with a path short enough for a client's sockaddr_un."""
    home = Path(tempfile.mkdtemp(prefix="qlb-", dir="/tmp"))
    yield Paths(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def broker(paths, logs):
    b = Broker(paths, Lifecycle, ask_timeout=30.0, log=logs.append)
    yield b
    b.stopping.set()
    b.close()
    for s in b.listeners.values():
        s.close()
    os.close(b._wake_r)
    os.close(b._wake_w)


@pytest.fixture
def serving(broker, paths, monkeypatch):
    """Start BROKER's loop with QUBES running; stopped at teardown."""
    threads: list[threading.Thread] = []

    def start(qubes: set[str]) -> Broker:
        for name in qubes:
            paths.rpc_dir(name).mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(broker, "running_qubes", lambda: {q: f"cid-{q}" for q in qubes})
        t = threading.Thread(target=broker.serve, kwargs={"rescan_every": 0.1}, daemon=True)
        t.start()
        threads.append(t)
        wait_until(lambda: qubes <= set(broker.listeners), "the broker listens for every qube")
        return broker

    yield start
    broker.stopping.set()
    for t in threads:
        t.join(timeout=WAIT_S)


def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def resolution(action: str, target: str | None = None, choices: tuple[str, ...] = ()) -> Resolution:
    return Resolution(
        action=action,
        target=target,
        choices=choices,
        user=None,
        notify=False,
        autostart=False,
        rule=None,
        reason=f"the test says {action}",
    )


def policy_says(monkeypatch, action: str, target: str | None = None, choices: tuple[str, ...] = ()) -> None:
    monkeypatch.setattr(
        broker_mod, "evaluate_call", lambda paths, qubes, request: (resolution(action, target, choices), None)
    )


def connect(path: Path) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(WAIT_S)
    c.connect(str(path))
    return c


def read_all(c: socket.socket) -> list[tuple[int, bytes]]:
    """Every frame up to the end of the connection (bounded by the socket's timeout)."""
    decoder = wire.Decoder()
    frames = []
    while data := c.recv(65536):
        frames += decoder.feed(data)
    assert decoder.pending == 0
    return frames


def request(service: str = "qubes.GetDate", target: str = "dom0") -> bytes:
    return wire.encode_json(wire.REQUEST, {"version": 1, "service": service, "target": target, "argument": ""})


def call(path: Path) -> list[tuple[int, bytes]]:
    """A whole call with an empty stdin; every frame of the answer."""
    with connect(path) as c:
        c.sendall(request() + wire.encode(wire.STDIN))
        return read_all(c)


def messages(frames: list[tuple[int, bytes]], kind: int) -> list[dict]:
    return [json.loads(p) for k, p in frames if k == kind]


def start_call(broker: Broker, source: str) -> tuple[socket.socket, threading.Thread]:
    """A Call from SOURCE on one end of a socketpair; the client's end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.settimeout(WAIT_S)
    t = threading.Thread(target=Call(broker, theirs, source).run, daemon=True)
    t.start()
    return ours, t


# -- the whole-request deadline --------------------------------------------------------------


def test_a_request_trickled_byte_by_byte_is_cut_off_at_the_deadline(broker, monkeypatch):
    monkeypatch.setattr(broker_mod, "REQUEST_TIMEOUT_S", 1.0)
    interval, count = 0.3, 20  # 6 s of trickling if nothing stopped it
    frame = request()
    assert len(frame) > count  # the request never completes: only the deadline can end it
    client, handler = start_call(broker, "slow")
    started = time.monotonic()
    with client:
        for byte in frame[:count]:
            # Waiting for an answer is the pause between bytes.
            readable, _, _ = select.select([client], [], [], interval)
            if readable:
                break
            client.sendall(bytes([byte]))
        cut_after = time.monotonic() - started
        frames = read_all(client)
    handler.join(timeout=WAIT_S)
    assert [k for k, _ in frames] == [wire.ERROR]
    assert "no request within" in messages(frames, wire.ERROR)[0]["message"]
    assert cut_after < count * interval / 2, f"cut off after {cut_after:.1f}s"
    records = audit.read(broker.paths.rpc_log)
    assert [r["decision"] for r in records if r.get("source") == "slow"] == ["error"]


def test_an_oversized_request_is_refused_from_its_header(broker, monkeypatch):
    """The broker does not wait for, or buffer, a request over its limit."""
    monkeypatch.setattr(broker_mod, "REQUEST_TIMEOUT_S", 4 * WAIT_S)  # only the header can end it in time
    client, handler = start_call(broker, "greedy")
    with client:
        client.sendall(wire.HEADER.pack(wire.REQUEST, wire.MAX_PAYLOAD) + b"{")
        frames = read_all(client)
    handler.join(timeout=WAIT_S)
    assert [k for k, _ in frames] == [wire.ERROR]
    assert "over the 4096-byte limit" in messages(frames, wire.ERROR)[0]["message"]


# -- connections per qube ---------------------------------------------------------------------


def test_connections_beyond_the_per_qube_cap_get_an_error_and_are_closed(serving, paths, logs, monkeypatch):
    cap = 2
    monkeypatch.setattr(broker_mod, "MAX_CONNECTIONS_PER_QUBE", cap)
    monkeypatch.setattr(broker_mod, "REQUEST_TIMEOUT_S", 30.0)  # the holders stay until the test lets go
    policy_says(monkeypatch, "allow", "dom0")
    broker = serving({"flood", "other"})
    flood = paths.rpc_dir("flood") / "rpc.sock"

    holders = [connect(flood) for _ in range(cap)]
    try:
        wait_until(lambda: broker._active.get("flood") == cap, "the holders' handlers run")
        with connect(flood) as over:
            frames = read_all(over)  # ends: the broker closed it at once
        assert [k for k, _ in frames] == [wire.ERROR]
        assert messages(frames, wire.ERROR)[0]["message"].startswith("too many connections from flood")

        # Another qube is not affected.
        answer = call(paths.rpc_dir("other") / "rpc.sock")
        assert messages(answer, wire.RESULT) == [{"result": "allow", "target": "dom0"}]
        assert messages(answer, wire.EXIT) == [{"code": 0}]
    finally:
        for h in holders:
            h.close()

    # A connection counts only while its handler runs.
    wait_until(lambda: broker._active.get("flood", 0) == 0, "the holders' handlers end")
    assert messages(call(flood), wire.EXIT) == [{"code": 0}]

    refused = [r for r in audit.read(paths.rpc_log) if "too many connections" in r.get("reason", "")]
    assert [(r["source"], r["decision"]) for r in refused] == [("flood", "error")]
    assert len([m for m in logs if "too many connections from flood" in m]) == 1


# -- questions per source ---------------------------------------------------------------------


ASK_CASES = [
    # (pending before: sources, one of them answered first, the new ask's source, refused?)
    (["a"] * 3, None, "a", False),
    (["a"] * 4, None, "a", True),
    (["a"] * 4, None, "b", False),
    (["a"] * 4 + ["b"] * 3, None, "b", False),
    (["a"] * 4, 0, "a", False),  # an answer frees a place
]


@pytest.mark.parametrize(("before", "answered", "source", "refused"), ASK_CASES)
def test_pending_questions_are_bounded_per_source(before, answered, source, refused):
    assert asks_mod.MAX_PENDING_ASKS_PER_SOURCE == 4
    q = AskQueue()
    made = [q.add(s, "qubes.Svc", "", "@default", ("work",), None, 30.0) for s in before]
    if answered is not None:
        q.answer(made[answered].id, allow=False)
    if refused:
        with pytest.raises(AccessDenied, match=f"^too many questions pending from {source}$"):
            q.add(source, "qubes.Svc", "", "@default", ("work",), None, 30.0)
        assert len(q.pending()) == len(made)
    else:
        ask = q.add(source, "qubes.Svc", "", "@default", ("work",), None, 30.0)
        assert ask in q.pending()


def test_a_question_over_the_bound_is_denied_at_once_and_audited(broker, ctx, paths, monkeypatch):
    for name in ("asker", "patient"):
        insert_row(QubeManager(ctx), name)
    policy_says(monkeypatch, "ask", choices=("dom0",))
    for _ in range(asks_mod.MAX_PENDING_ASKS_PER_SOURCE):
        broker.asks.add("asker", "qubes.GetDate", "", "dom0", ("dom0",), None, 30.0)

    client, handler = start_call(broker, "asker")
    with client:
        client.sendall(request())
        frames = read_all(client)  # the ask timeout is 30 s: only a refusal answers within WAIT_S
    handler.join(timeout=WAIT_S)
    assert messages(frames, wire.RESULT) == [
        {"result": "deny", "code": wire.EXIT_REFUSED, "message": "too many questions pending from asker"}
    ]
    decisions = [(r["decision"], r.get("reason")) for r in audit.read(paths.rpc_log) if r["source"] == "asker"]
    assert decisions == [("deny", "too many questions pending from asker")]

    # Another source still gets its question asked.
    client, handler = start_call(broker, "patient")
    with client:
        client.sendall(request())
        wait_until(lambda: any(a.source == "patient" for a in broker.asks.pending()), "patient's question is queued")
        ask = next(a for a in broker.asks.pending() if a.source == "patient")
        broker.asks.answer(ask.id, allow=False)
        frames = read_all(client)
    handler.join(timeout=WAIT_S)
    assert messages(frames, wire.RESULT)[0]["message"] == "the user said no"


# -- hostile RPC directories ------------------------------------------------------------------


def _outside(tmp: Path) -> Path:
    f = tmp / "outside-secret"
    f.write_bytes(b"host secret\n")
    f.chmod(0o600)
    return f


def _empty_dir(sock: Path, outside: Path) -> None:
    sock.mkdir()


def _full_dir(sock: Path, outside: Path) -> None:
    sock.mkdir()
    (sock / "keep").write_bytes(b"x")


def _fifo(sock: Path, outside: Path) -> None:
    os.mkfifo(sock)


def _regular(sock: Path, outside: Path) -> None:
    sock.write_bytes(b"not a socket")


def _symlink_out(sock: Path, outside: Path) -> None:
    sock.symlink_to(outside)


def _no_rpc_dir(sock: Path, outside: Path) -> None:
    sock.parent.rmdir()


def _rpc_dir_is_a_file(sock: Path, outside: Path) -> None:
    sock.parent.rmdir()
    sock.parent.write_bytes(b"")


# qube -> (what its root did to /run/qlite, does the broker listen for it afterwards)
HOSTILE = {
    "empty-dir": (_empty_dir, True),
    "full-dir": (_full_dir, False),
    "fifo": (_fifo, True),
    "regular": (_regular, True),
    "symlink": (_symlink_out, True),
    "no-dir": (_no_rpc_dir, False),
    "dir-is-file": (_rpc_dir_is_a_file, False),
}
GOOD = {"good-1", "good-2", "zz-good"}


def test_rescan_survives_anything_in_a_qubes_rpc_directory(broker, paths, logs, monkeypatch):
    outside = _outside(paths.home)
    for name, (make, _) in HOSTILE.items():
        paths.rpc_dir(name).mkdir(parents=True)
        make(paths.rpc_dir(name) / "rpc.sock", outside)
    for name in GOOD:
        paths.rpc_dir(name).mkdir(parents=True)
    monkeypatch.setattr(broker, "running_qubes", lambda: {q: f"cid-{q}" for q in set(HOSTILE) | GOOD})

    broker.rescan()

    expected = GOOD | {name for name, (_, listens) in HOSTILE.items() if listens}
    assert set(broker.listeners) == expected
    for name in expected:
        sock = paths.rpc_dir(name) / "rpc.sock"
        st = sock.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666, name
        connect(sock).close()
    assert outside.read_bytes() == b"host secret\n"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert (paths.rpc_dir("full-dir") / "rpc.sock" / "keep").read_bytes() == b"x"
    assert len([m for m in logs if "full-dir" in m]) == 1

    # The next rescan tries again, without a new line for the same trouble.
    broker.rescan()
    assert set(broker.listeners) == expected
    assert len([m for m in logs if "full-dir" in m]) == 1


def test_the_socket_mode_cannot_be_redirected_through_a_symlink(broker, paths, logs, monkeypatch):
    outside = _outside(paths.home)
    sock = paths.rpc_dir("victim") / "rpc.sock"
    sock.parent.mkdir(parents=True)
    monkeypatch.setattr(broker, "running_qubes", lambda: {"victim": "cid-victim"})
    real_socket = socket.socket

    class SwappedAfterBind(real_socket):
        """The qube's root wins the race: between bind and chmod, rpc.sock
        becomes a symlink to a host file."""

        def bind(self, address):
            super().bind(address)
            if self.family == socket.AF_UNIX and str(address).endswith("rpc.sock"):
                sock.unlink()
                sock.symlink_to(outside)

    monkeypatch.setattr(socket, "socket", SwappedAfterBind)
    broker.rescan()
    monkeypatch.setattr(socket, "socket", real_socket)

    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert outside.read_bytes() == b"host secret\n"
    assert "victim" not in broker.listeners
    assert any(m.startswith("cannot listen for victim") for m in logs), logs
