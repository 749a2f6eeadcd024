"""Owner tags "pid:start_ticks": parsing and liveness."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qlite.state.owners import current_owner, owner_alive, parse_owner, process_start_ticks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:2", (1, 2)),
        ("12345:987654321", (12345, 987654321)),
        ("0:0", (0, 0)),
        ("007:010", (7, 10)),
        ("", None),
        (":", None),
        ("1", None),
        ("1:", None),
        (":2", None),
        ("a:1", None),
        ("1:b", None),
        ("-1:2", None),
        ("1:-2", None),
        ("1.5:2", None),
        (" 1:2", None),
        ("1:2 ", None),
        ("1:2:3", None),
        ("1:None", None),
        ("+1:2", None),
        ("²:1", None),  # str.isdigit() is True for superscripts, int() refuses them
        ("1:³", None),
    ],
)
def test_parse_owner(text, expected):
    assert parse_owner(text) == expected


def test_current_process_is_alive():
    owner = current_owner()
    pid, ticks = parse_owner(owner)
    assert pid == os.getpid()
    assert ticks == process_start_ticks(os.getpid())
    assert owner_alive(owner) is True


def test_a_reaped_child_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        owner = f"{child.pid}:{ticks}"
        assert owner_alive(owner) is True
    finally:
        child.kill()
        child.wait()
    assert owner_alive(owner) is False


def test_a_zombie_child_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ticks = process_start_ticks(child.pid)
    owner = f"{child.pid}:{ticks}"
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    try:
        assert owner_alive(owner) is False
    finally:
        child.wait()


def test_a_wrong_start_time_is_dead():
    pid = os.getpid()
    ticks = process_start_ticks(pid)
    assert owner_alive(f"{pid}:{ticks + 1}") is False
    assert owner_alive(f"{pid}:0") is False


@pytest.mark.parametrize(
    "owner",
    [
        None,
        "",
        "garbage",
        "1:x",
        ":",
        "99999999:1",
        "4194305:1",
        f"{2**40}:1",
        "0:0",
        "²:1",
        "1:²",
    ],
)
def test_garbage_owners_are_dead(owner):
    assert owner_alive(owner) is False
