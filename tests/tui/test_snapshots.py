"""Snapshots at a fixed terminal size (pytest-textual-snapshot). Usage
numbers are fixed by the fake core and the ask modal's clock is frozen, so
the pictures do not move. Update with: pytest tests/tui --snapshot-update"""

from __future__ import annotations

import os

import pytest
from textual.widgets import Input

from qlite.core.qubes import QubeManager
from tui.screens.ask import AskScreen
from tui.screens.create import CreateQubeScreen
from tui.widgets.qube_table import QubeTable

from .conftest import SIZE, wait_for, wait_for_screen
from .test_asks import Clock, question

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="laying out a private volume needs root")


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
