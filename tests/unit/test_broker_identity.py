"""The broker goes by identities, not names: approvals are kept by uuid,
and a new qube under an old name gets a socket of its own."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from qlite.core.lifecycle import Lifecycle
from qlite.paths import Paths
from qlite.rpc.asks import Approvals, AskQueue
from qlite.rpc.broker import Broker
from qlite.rpc.policy import QubeFacts, System
from tests.unit.fake_clock import FakeClock

A, B, C = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002", "cccc"


@pytest.mark.parametrize(
    ("remembered", "asked", "found"),
    [
        ((A, "qubes.Gpg", "@default", "vault", B), (A, "qubes.Gpg", "@default"), True),
        ((A, "qubes.Gpg", "@default", "vault", B), (C, "qubes.Gpg", "@default"), False),  # another caller
        ((A, "qubes.Gpg", "@default", "vault", B), (A, "qubes.Gpg", "vault"), False),
        ((A, "qubes.Gpg", "@default", "vault", B), (A, "qubes.Other", "@default"), False),
        (("", "qubes.Gpg", "@default", "vault", B), ("", "qubes.Gpg", "@default"), False),  # no identity: no memory
    ],
)
def test_approvals_are_kept_by_the_callers_uuid(remembered, asked, found):
    a = Approvals()
    a.remember(*remembered, seconds=60)
    got = a.lookup(*asked)
    assert (got is not None) is found
    if found:
        assert (got.chosen, got.chosen_id) == ("vault", B)


def test_forget_drops_approvals_given_to_and_for_a_qube():
    a = Approvals()
    a.remember(A, "s", "@default", "vault", B, seconds=60)
    a.remember(C, "s", "@default", "other", A, seconds=60)
    a.remember(C, "s", "x", "other", "dddd", seconds=60)
    assert a.forget(A) == 2
    assert a.lookup(A, "s", "@default") is None and a.lookup(C, "s", "@default") is None
    assert a.lookup(C, "s", "x") is not None


@pytest.mark.parametrize(("later", "kept"), [(0, True), (59.9, True), (60, False), (3600, False)])
def test_an_approval_holds_for_its_window_and_then_lapses(later, kept):
    clock = FakeClock()
    a = Approvals(clock)
    a.remember(A, "s", "t", "vault", B, seconds=60)
    clock.advance(later)
    assert (a.lookup(A, "s", "t") is not None) is kept


def test_a_question_left_unanswered_past_its_deadline_is_denied():
    clock = FakeClock()
    q = AskQueue(clock)
    ask = q.add("work", "qubes.Gpg", "", "@default", ("vault",), "vault", 30.0)
    assert ask.as_json(clock.time())["seconds_left"] == 30
    clock.advance(31)
    assert ask.as_json(clock.time())["seconds_left"] == 0
    assert q.wait(ask) == (False, None)  # returns at once: the deadline has passed
    assert q.pending() == []


@pytest.mark.parametrize(
    ("token", "identity"),
    [
        ("vault", B),
        ("@dispvm:vault", B),
        ("dom0", "dom0"),
        ("@dispvm", "@dispvm"),
        ("gone", "gone"),
    ],
)
def test_system_identity(token, identity):
    system = System(qubes={"vault": QubeFacts(name="vault", klass="AppVM", uuid=B)})
    assert system.identity(token) == identity


@pytest.fixture
def broker():
    home = Path(tempfile.mkdtemp(prefix="qlb-", dir="/tmp"))
    b = Broker(Paths(home), Lifecycle, log=lambda _m: None)
    yield b
    b.close()
    os.close(b._wake_r)
    os.close(b._wake_w)
    shutil.rmtree(home, ignore_errors=True)


def test_a_new_container_under_an_old_name_gets_a_socket_of_its_own(broker, monkeypatch):
    broker.paths.rpc_dir("vault").mkdir(parents=True)
    running = {"vault": "cid-1"}
    monkeypatch.setattr(broker, "running_qubes", lambda: dict(running))
    broker.rescan()
    first = broker.listeners["vault"]
    sock = broker.paths.rpc_dir("vault") / "rpc.sock"
    broker.rescan()
    assert broker.listeners["vault"] is first  # the same run: kept
    running["vault"] = "cid-2"  # removed and made again, or restarted
    broker.rescan()
    assert broker.listeners["vault"] is not first and first.fileno() == -1
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(sock))  # reaches the new listener
    broker.listeners["vault"].settimeout(2)
    conn, _ = broker.listeners["vault"].accept()
    conn.close()
    client.close()


def test_the_forget_op(broker):
    broker.approvals.remember(A, "s", "t", "vault", B, seconds=60)
    assert broker._admin_op({"op": "forget", "uuid": B}) == {"ok": True, "forgotten": 1}
    with pytest.raises(ValueError):
        broker._admin_op({"op": "forget", "uuid": ""})
