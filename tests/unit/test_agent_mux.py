"""The daemon's side of a container qube's agent (qlite.agent.mux), over
socket pairs: a fake agent on one end, host clients on the other. The
agent's end is the qube's: every frame from it may be forged."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from qlite.agent import channel as ch
from qlite.agent import frames
from qlite.agent.mux import MAX_GREETING, AgentMux

TIMEOUT = 10.0


class Peer:
    """One end of a socket pair, read frame by frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(TIMEOUT)
        self.decoder = ch.Decoder()
        self.backlog: list = []

    def send(self, kind: int, channel: int = 0, payload: bytes = b"") -> None:
        self.sock.sendall(ch.encode(kind, channel, payload))

    def send_json(self, kind: int, channel: int, obj: dict) -> None:
        self.sock.sendall(ch.encode_json(kind, channel, obj))

    def recv(self):
        return frames.recv_frame(self.sock, self.decoder, self.backlog)


@pytest.fixture
def mux():
    logged: list[str] = []
    m = AgentMux("work", logged.append, link_wait=0.5)
    m.logged = logged  # type: ignore[attr-defined]
    yield m
    m.close()


def connect_agent(mux: AgentMux, greet: bool = True) -> tuple[Peer, threading.Thread]:
    ours, theirs = socket.socketpair()
    agent = Peer(ours)
    if greet:
        agent.send_json(ch.HELLO, 0, {"version": ch.VERSION})
    t = threading.Thread(target=mux.agent_connected, args=(theirs,), daemon=True)
    t.start()
    return agent, t


def wait_link(mux: AgentMux) -> None:
    with mux.cond:
        assert mux.cond.wait_for(lambda: mux.link is not None, TIMEOUT)


def open_client(mux: AgentMux, argv: list[str] | None = None) -> Peer:
    ours, theirs = socket.socketpair()
    threading.Thread(target=mux.client, args=(theirs,), daemon=True).start()
    client = Peer(ours)
    client.send_json(ch.OPEN, 0, {"kind": "exec", "argv": argv or ["true"], "user": "user"})
    return client


def test_a_client_gets_a_channel_of_its_own_and_the_agents_answers_on_channel_0(mux):
    agent, _ = connect_agent(mux)
    wait_link(mux)
    one, two = open_client(mux, ["one"]), open_client(mux, ["two"])
    opened = {}
    for _ in range(2):
        kind, channel, payload = agent.recv()
        assert kind == ch.OPEN and channel % 2 == 0 and channel != 0
        opened[ch.decode_json(payload)["argv"][0]] = channel
    assert opened["one"] != opened["two"]
    agent.send(ch.STDOUT, opened["two"], b"from two")
    agent.send_json(ch.EXIT, opened["two"], {"code": 7})
    agent.send(ch.STDOUT, opened["one"], b"from one")
    assert two.recv() == (ch.STDOUT, 0, b"from two")
    assert two.recv() == (ch.EXIT, 0, b'{"code":7}')
    assert one.recv() == (ch.STDOUT, 0, b"from one")
    one.send(ch.STDIN, 0, b"input")
    assert agent.recv() == (ch.STDIN, opened["one"], b"input")
    one.sock.close()  # the client went away: the agent ends its command
    assert agent.recv() == (ch.CLOSE, opened["one"], b"")


def test_without_an_agent_the_client_is_told_nothing_ran(mux):
    client = open_client(mux)
    kind, _c, payload = client.recv()
    assert kind == ch.ERROR
    assert ch.decode_json(payload) == {"message": "the agent of work is not connected", "unavailable": True}


@pytest.mark.parametrize(
    "forged",
    [
        ch.encode(ch.STDIN, 2, b"x"),  # only the host sends stdin
        ch.encode(ch.SIGNAL, 2, b'{"signal":9}'),
        ch.encode(ch.RESIZE, 2, b'{"rows":1,"cols":1}'),
        struct.pack(">BII", 0x7F, 2, 0),  # no such frame type
        struct.pack(">BII", ch.STDOUT, 2, ch.MAX_PAYLOAD + 1),  # over the limit: nothing of it is read
    ],
    ids=["stdin", "signal", "resize", "unknown-type", "oversized"],
)
def test_a_forged_frame_ends_the_link_and_the_sessions_on_it_fail(mux, forged):
    agent, reader = connect_agent(mux)
    wait_link(mux)
    client = open_client(mux)
    assert agent.recv()[0] == ch.OPEN
    agent.sock.sendall(forged)
    kind, _c, payload = client.recv()
    assert kind == ch.ERROR and "bad frame" in ch.decode_json(payload)["message"]
    reader.join(TIMEOUT)
    assert not reader.is_alive() and mux.link is None
    assert any("bad frame" in line for line in mux.logged)  # type: ignore[attr-defined]


def test_frames_for_channels_no_client_holds_are_dropped(mux):
    agent, _ = connect_agent(mux)
    wait_link(mux)
    for channel in (2, 4, 1000):
        agent.send(ch.STDOUT, channel, b"junk")
        agent.send_json(ch.EXIT, channel, {"code": 0})
    agent.send_json(ch.OPEN, 1, {"kind": "rpc"})  # a container qube calls RPC on its own socket
    assert agent.recv() == (ch.CLOSE, 1, b"")
    client = open_client(mux)
    kind, channel, _ = agent.recv()
    agent.send_json(ch.EXIT, channel, {"code": 0})
    assert client.recv() == (ch.EXIT, 0, b'{"code":0}')


def test_a_reconnected_agent_replaces_the_link_and_strands_nothing(mux):
    old, old_reader = connect_agent(mux)
    wait_link(mux)
    client = open_client(mux)
    assert old.recv()[0] == ch.OPEN
    new, _ = connect_agent(mux)
    kind, _c, payload = client.recv()
    assert kind == ch.ERROR and "reconnected" in ch.decode_json(payload)["message"]
    old_reader.join(TIMEOUT)
    assert not old_reader.is_alive()
    later = open_client(mux)
    kind, channel, _ = new.recv()
    assert kind == ch.OPEN
    new.send_json(ch.EXIT, channel, {"code": 3})
    assert later.recv() == (ch.EXIT, 0, b'{"code":3}')


@pytest.mark.parametrize(
    "first",
    [ch.encode(ch.STDOUT, 0, b"hi"), ch.encode_json(ch.HELLO, 3, {"version": 1}), b""],
    ids=["not-hello", "hello-on-another-channel", "silence"],
)
def test_a_connection_that_does_not_greet_is_not_the_link(mux, first, monkeypatch):
    monkeypatch.setattr("qlite.agent.mux.GREETING_TIMEOUT_S", 0.3)
    agent, t = connect_agent(mux, greet=False)
    if first:
        agent.sock.sendall(first)
    t.join(TIMEOUT)
    assert not t.is_alive() and mux.link is None
    assert agent.sock.recv(1) == b""  # closed


def test_only_a_few_connections_may_wait_to_greet(mux):
    waiting = [connect_agent(mux, greet=False) for _ in range(MAX_GREETING)]
    with mux.cond:
        assert mux.cond.wait_for(lambda: mux.greeting == MAX_GREETING, TIMEOUT)
    assert not mux.may_greet()
    for agent, _ in waiting:
        agent.sock.close()
    with mux.cond:
        assert mux.cond.wait_for(lambda: mux.greeting == 0, TIMEOUT)
    assert mux.may_greet()


def test_closing_the_mux_fails_the_running_sessions(mux):
    agent, _ = connect_agent(mux)
    wait_link(mux)
    client = open_client(mux)
    assert agent.recv()[0] == ch.OPEN
    mux.close()
    kind, _c, payload = client.recv()
    assert kind == ch.ERROR and "stopped" in ch.decode_json(payload)["message"]
