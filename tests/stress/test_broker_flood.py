"""50 callers at once on a qube's broker socket, with malformed frames
mixed in: every good call is answered correctly, every bad one gets an
error frame, and the broker goes on serving.

The callers connect on the host side to the socket that the qube
``caller`` sees as /run/qlite/rpc.sock, so the broker takes them all for
``caller`` (which is what a compromised qube flooding its broker is).
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from dataclasses import dataclass, field

import pytest

from qlite.rpc import wire

from .conftest import caller_and_target, store_problems

pytestmark = pytest.mark.integration

CALLERS = 50
SEED = 50
CALL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def broker(home):
    yield from caller_and_target(
        home, "qubes.VMShell * caller target allow\nqubes.GetDate * caller @default allow target=dom0\n"
    )


def request(service: str, target: str) -> bytes:
    return wire.encode_json(wire.REQUEST, {"version": 1, "service": service, "target": target, "argument": ""})


def raw_frame(kind: int, payload: bytes) -> bytes:
    """A frame as a hostile qube may send it, past every check of wire.encode."""
    return struct.pack(">BI", kind, len(payload)) + payload


# What each kind of caller sends; None for "then half-close and read".
BAD = {
    "unknown frame type": struct.pack(">BI", 0x42, 1) + b"x",
    "oversized frame": struct.pack(">BI", wire.REQUEST, 10_000_000) + b"x" * 64,
    "not json": wire.encode(wire.REQUEST, b"{not json"),
    "not an object": wire.encode(wire.REQUEST, b"[1, 2]"),
    # Built by hand: qlite's own encoder refuses a REQUEST this big.
    "oversized request": raw_frame(wire.REQUEST, json.dumps({"service": "x" * 5000}).encode()),
    "bad service name": wire.encode_json(wire.REQUEST, {"service": "../etc/passwd", "target": "target"}),
    "stdin before request": wire.encode(wire.STDIN, b"hello"),
    "truncated frame": struct.pack(">BI", wire.REQUEST, 50) + b"{",
    "garbage": bytes(range(256)),
    "bad stdin after request": request("qubes.VMShell", "target") + struct.pack(">BI", 0x99, 3) + b"abc",
}


@dataclass
class Caller:
    index: int
    kind: str  # vmshell | getdate | a key of BAD
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    error: str = ""

    def payload(self) -> bytes:
        if self.kind == "vmshell":
            return (
                request("qubes.VMShell", "target")
                + wire.encode(wire.STDIN, f"echo good-{self.index}\n".encode())
                + wire.encode(wire.STDIN)
            )
        if self.kind == "getdate":
            return request("qubes.GetDate", "@default") + wire.encode(wire.STDIN)
        return BAD[self.kind]


def converse(path: str, caller: Caller, start: threading.Barrier) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CALL_TIMEOUT_S)
    try:
        sock.connect(path)
        start.wait(timeout=60)
        sock.sendall(caller.payload())
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        decoder = wire.Decoder()
        caller.frames = decoder.feed(data)
        if decoder.pending:
            caller.error = f"{decoder.pending} bytes of a partial frame"
    except (OSError, threading.BrokenBarrierError, wire.WireError) as exc:
        caller.error = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()


def check(caller: Caller) -> str | None:
    """What is wrong with CALLER's answer, or None."""
    if caller.error:
        return caller.error
    kinds = [k for k, _ in caller.frames]
    if not kinds:
        return "no answer"
    last_kind, last = caller.frames[-1]
    if caller.kind in BAD:
        errors = [json.loads(p) for k, p in caller.frames if k == wire.ERROR]
        if not errors or not errors[0].get("message") or wire.EXIT in kinds:
            return f"expected an ERROR frame and no EXIT, got {kinds}"
        return None
    if last_kind != wire.EXIT or json.loads(last) != {"code": 0}:
        return f"expected EXIT 0 last, got {caller.frames[-3:]}"
    if kinds[0] != wire.RESULT or json.loads(caller.frames[0][1]).get("result") != "allow":
        return f"expected RESULT allow first, got {caller.frames[:1]}"
    out = b"".join(p for k, p in caller.frames if k == wire.STDOUT)
    if caller.kind == "vmshell" and out != f"good-{caller.index}\n".encode():
        return f"wrong output {out!r}"
    if caller.kind == "getdate" and not out.strip():
        return "no date"
    return None


def test_fifty_concurrent_callers_with_bad_frames(broker):
    home = broker
    rng = random.Random(SEED)
    kinds = ["vmshell"] * 20 + ["getdate"] * 15 + list(BAD) + rng.choices(list(BAD), k=CALLERS - 35 - len(BAD))
    rng.shuffle(kinds)
    callers = [Caller(i, kind) for i, kind in enumerate(kinds)]
    path = str(home.path / "run" / "rpc" / "caller" / "rpc.sock")
    start = threading.Barrier(len(callers))
    threads = [threading.Thread(target=converse, args=(path, c, start), daemon=True) for c in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CALL_TIMEOUT_S + 60)
    assert not any(t.is_alive() for t in threads), "a caller got no end to its call"

    problems = {(c.index, c.kind): p for c in callers if (p := check(c)) is not None}
    assert problems == {}

    # The broker goes on: a call from inside the qube works, and every call
    # of the flood is in the audit log with its outcome.
    proc = home.run("run", "caller", "--", "qrexec-client-vm", "target", "qubes.VMShell", input="echo after\n")
    assert proc.stdout == "after\n"
    records = home.json("log", "rpc", "-n", "500")
    done = [r for r in records if r.get("decision") == "done" and r.get("exit") == 0]
    errors = [r for r in records if r.get("decision") == "error"]
    assert len(done) >= 36  # 35 in the flood, one after
    assert len(errors) >= sum(c.kind in BAD and c.kind != "bad stdin after request" for c in callers)
    assert store_problems(home) == []
