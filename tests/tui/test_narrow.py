"""The TUI at 80x24, the smallest terminal people use: every key of every
screen is visible in the footer, and the qube list keeps its essential
columns (NAME, STATE, LABEL, NETVM, MEM, CPU) without scrolling sideways,
dropping the others."""

from __future__ import annotations

from textual.widgets._footer import FooterKey

from qlite.tui.screens.aem import AemScreen
from qlite.tui.screens.devices import DevicesScreen
from qlite.tui.screens.logs import LogsScreen
from qlite.tui.screens.qubes import QubesScreen
from qlite.tui.screens.templates import TemplatesScreen
from qlite.tui.widgets.qube_table import ESSENTIAL, QubeTable

from .conftest import footer_settled, wait_for, wait_for_screen
from .test_snapshots import populate

NARROW = (80, 24)
SCREENS = (("1", QubesScreen), ("2", TemplatesScreen), ("3", LogsScreen), ("4", DevicesScreen), ("5", AemScreen))


def assert_every_key_is_visible(app) -> None:
    screen = app.screen
    wanted = {b.action for _, b, _, _ in screen.active_bindings.values() if b.show}
    keys = list(screen.query(FooterKey))
    assert {k.action for k in keys} == wanted
    for key in keys:
        r = key.region
        assert r.width > len(key.description), f"{key.key} {key.description!r} is cut: {r}"
        assert screen.region.contains_region(r), f"{key.key} {key.description!r} is off the screen: {r}"
        # Nothing covers it: the key is what is drawn at both of its ends.
        for x in (r.x, r.right - 1):
            assert screen.get_widget_at(x, r.y)[0] is key, f"{key.key} {key.description!r} is hidden"


async def test_every_key_of_every_screen_is_visible_at_80x24(core, aem, block):
    app = core.app()
    async with app.run_test(size=NARROW) as pilot:
        for key, screen_type in SCREENS:
            await pilot.press(key)
            await wait_for_screen(pilot, screen_type)
            await footer_settled(pilot)
            assert_every_key_is_visible(app)


async def test_the_essential_columns_fit_at_80x24(core):
    populate(core)
    app = core.app()
    async with app.run_test(size=NARROW) as pilot:
        table = app.screen.query_one(QubeTable)
        await wait_for(pilot, lambda: table.row_count == 5 and "work" in [k.value for k in table.rows])
        await footer_settled(pilot)
        assert set(ESSENTIAL) <= set(table.shown_columns)
        headers = [str(c.label) for c in table.ordered_columns]
        assert headers[:3] == ["NAME", "STATE", "LABEL"] and {"NETVM", "MEM MiB", "CPU"} <= set(headers)
        assert "NETPATH" not in headers  # what goes first to make room
        # No sideways scrolling: every shown column is on the screen.
        assert table.virtual_size.width <= table.scrollable_content_region.width
        # The label is there in words, not only as the name's colour.
        assert str(table.get_cell("work", "label")) == "blue"
        assert [str(table.get_cell("work", k)) for k in ("state", "netvm", "mem", "cpu")] == [
            "Running",
            "dom0",
            "64/400",
            "1.5%",
        ]
        # Rows are visible: the list is not squeezed out by the footer and the log.
        assert table.scrollable_content_region.height >= 6

        # Wider again: every column comes back.
        await pilot.resize_terminal(140, 40)
        await wait_for(pilot, lambda: "netpath" in table.shown_columns, what="the columns to come back")
        assert len(table.ordered_columns) == 10
