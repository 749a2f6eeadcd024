"""Snapshots at a fixed terminal size (pytest-textual-snapshot). Usage
numbers are fixed by the fake core and the ask modal's clock is frozen, so
the pictures do not move. Update with: pytest tests/tui --snapshot-update"""

from __future__ import annotations

import os
import time

import pytest
from textual.widgets import Input

from qlite.core.qubes import QubeManager
from qlite.tui.screens.aem import AemScreen
from qlite.tui.screens.ask import AskScreen
from qlite.tui.screens.create import CreateQubeScreen
from qlite.tui.screens.devices import DevicesScreen
from qlite.tui.widgets.qube_table import QubeTable

from .conftest import PASSPHRASE, SIZE, footer_settled, wait_for, wait_for_screen
from .test_asks import Clock, question


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Times in the pictures are shown in UTC, wherever the tests run."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def populate(core) -> None:
    ctx = core.context()
    qm = QubeManager(ctx)
    qm.create("work", label="blue")
    qm.create("vault", label="black", netvm="none")
    qm.create("sys-firewall", label="green", props={"provides_network": "True"})
    qm.create("personal", label="yellow", netvm="sys-firewall")
    qm.start("work")
    ctx.store.close()


async def steady(pilot, screen_type=None) -> None:
    app = pilot.app
    if screen_type is None:
        await wait_for(pilot, lambda: app.screen.query(QubeTable) and app.screen.query_one(QubeTable).row_count == 5)
    else:
        await wait_for_screen(pilot, screen_type)
    if not app.screen.is_modal:
        await footer_settled(pilot)
    for field in app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause(0.1)


def test_main_list(core, snap_compare):
    populate(core)

    async def ready(pilot) -> None:
        await steady(pilot)

    assert snap_compare(core.app(), terminal_size=SIZE, run_before=ready)


def test_create_form(core, snap_compare):
    populate(core)

    async def ready(pilot) -> None:
        await steady(pilot)
        await pilot.press("n")
        await steady(pilot, CreateQubeScreen)
        await pilot.press(*"mail")

    assert snap_compare(core.app(), terminal_size=SIZE, run_before=ready)


def test_ask_modal(core, snap_compare):
    populate(core)
    core.asks.questions = [question(choices=("vault", "personal"), default="vault", seconds=42)]

    async def ready(pilot) -> None:
        await steady(pilot, AskScreen)
        await wait_for(pilot, lambda: pilot.app.screen.query_one(".dialog").region.area)

    assert snap_compare(core.app(clock=Clock()), terminal_size=SIZE, run_before=ready)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a devices directory to its owners needs root")
def test_devices_screen(core, block, snap_compare):
    core.engine.gives_devices_to_containers = True  # as podman does
    populate(core)
    block.add("sdb1", fs_uuid="1234-ABCD", label="STICK", fs_type="vfat", serial="XYZ9")
    block.add("loop3", fs_uuid="0f3c2a7e-9b1d-4c55-8e2a-3d6f1b2c4e5f", label="backup", major_minor="7:3")
    ctx = core.context()
    dm = QubeManager(ctx).devices
    dm.attach("work", "sdb1", read_only=True)
    dm.assign("vault", "uuid:0f3c2a7e-9b1d-4c55-8e2a-3d6f1b2c4e5f", paired=True)
    ctx.store.close()
    # A log with fixed times, so that the picture does not move.
    core.paths.device_log.write_text(
        '{"time": 0, "event": "attach", "qube": "work", "read_only": true, "device": "sdb1", '
        '"ident": "uuid:1234-ABCD"}\n'
        '{"time": 60, "event": "detach", "qube": "personal", "device": "sdc1", "gone": true}\n'
        '{"time": 60, "event": "removed", "qube": "personal", "device": "sdc1", "unsafe": true, '
        '"detail": "removed without eject: writes not yet on the drive may be lost"}\n'
    )

    async def ready(pilot) -> None:
        await pilot.press("4")
        await steady(pilot, DevicesScreen)
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#events").row_count == 3)

    assert snap_compare(core.app(), terminal_size=SIZE, run_before=ready)


def test_aem_screen_after_a_failed_verify(core, aem, snap_compare):
    aem.seal(sealed_at=0)
    aem.change("binary:runsc")

    async def ready(pilot) -> None:
        await pilot.press("5")
        await steady(pilot, AemScreen)
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.status is not None)
        await pilot.press("v")
        await wait_for(pilot, lambda: pilot.app.screen.query("#passphrase"))
        pilot.app.screen.query_one("#passphrase", Input).value = PASSPHRASE.decode()
        await pilot.press("enter")
        await wait_for(pilot, lambda: "FAILED" in str(screen.query_one("#verdict").content))

    assert snap_compare(core.app(), terminal_size=SIZE, run_before=ready)
