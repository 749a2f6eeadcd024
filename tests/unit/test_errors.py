"""The error lattice: a caller can catch the precise state that was in the
way (NotRunning, Busy...), and code that catches the parent still does,
with the same exit code and the same one-line message."""

from __future__ import annotations

import pytest

from qlite.cli import main
from qlite.core.qubes import QubeManager
from qlite.core.templates import TemplateManager
from qlite.engines.base import Stdio
from qlite.errors import (
    Busy,
    InUse,
    NotFound,
    NotHalted,
    NotPaused,
    NotRunning,
    QliteError,
    QubeNotFound,
    StateError,
    TemplateNotFound,
)
from qlite.state.owners import current_owner

from .conftest import TEMPLATE


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (NotRunning, StateError),
        (NotPaused, StateError),
        (NotHalted, StateError),
        (Busy, StateError),
        (InUse, StateError),
        (QubeNotFound, NotFound),
        (TemplateNotFound, NotFound),
    ],
)
def test_a_precise_error_is_still_its_parent(cls, parent):
    assert issubclass(cls, parent) and issubclass(cls, QliteError)
    assert cls.exit_code == parent.exit_code == 125
    with pytest.raises(parent, match="^one line$"):
        raise cls("one line")


@pytest.fixture
def qm(ctx) -> QubeManager:
    qm = QubeManager(ctx)
    qm.create("work", label="blue", template=TEMPLATE)
    qm.create("spare", label="red", template=TEMPLATE)
    return qm


def running(qm):
    qm.start("work")


def paused(qm):
    qm.start("work")
    qm.pause("work")


def pending(qm):
    qm.ctx.store.execute("UPDATE qubes SET pending=? WHERE name='work'", (current_owner(),))


@pytest.mark.parametrize(
    ("before", "act", "cls", "message"),
    [
        (None, lambda qm: qm.pause("work"), NotRunning, "qube 'work' is not running"),
        (None, lambda qm: qm.run("work", ["ls"], Stdio(), autostart=False), NotRunning, "qube 'work' is not running"),
        (paused, lambda qm: qm.run("work", ["ls"], Stdio()), NotRunning, "qube 'work' is paused: unpause it first"),
        (None, lambda qm: qm.unpause("work"), NotPaused, "qube 'work' is not paused"),
        (running, lambda qm: qm.start("work"), NotHalted, "qube 'work' is already running"),
        (running, lambda qm: qm.remove("work"), NotHalted, "qube 'work' is running: shut it down first"),
        (
            running,
            lambda qm: qm.set_pref("work", "mode", "vm"),
            NotHalted,
            "work is running: shut it down before changing its mode",
        ),
        (
            pending,
            lambda qm: qm.start("work"),
            Busy,
            "qube 'work' is being created or removed by another qlite command",
        ),
        (
            None,
            lambda qm: TemplateManager(qm.ctx).remove(TEMPLATE),
            InUse,
            f"template '{TEMPLATE}' is still used by: spare, work",
        ),
        (None, lambda qm: qm.get("nosuch"), QubeNotFound, "no such qube: 'nosuch'"),
        (
            None,
            lambda qm: TemplateManager(qm.ctx).get("nosuch"),
            TemplateNotFound,
            "no such template: 'nosuch' (see 'qlite template list')",
        ),
    ],
)
def test_raise_sites_raise_the_precise_error(qm, before, act, cls, message):
    if before is not None:
        before(qm)
    with pytest.raises(cls) as exc:
        act(qm)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("drive", "holders", "cls", "message"),
    [
        ("sdb1", (), NotRunning, "qube work is not running: start it, or assign the device with 'qlite device assign'"),
        ("sda", ("dm-0",), Busy, "sda is in use on the host (by dm-0)"),
    ],
)
def test_device_raise_sites(qm, blocks, drive, holders, cls, message):
    blocks.add(drive, holders=holders)
    with pytest.raises(cls) as exc:
        qm.devices.attach("work", drive)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        (["pause", "work"], "qlite: error: qube 'work' is not running\n"),
        (["unpause", "work"], "qlite: error: qube 'work' is not paused\n"),
        (["start", "nosuch"], "qlite: error: no such qube: 'nosuch'\n"),
    ],
)
def test_the_cli_shows_them_as_before(qm, capsys, argv, err):
    assert main(argv, qm.ctx) == 125
    assert capsys.readouterr().err == err
