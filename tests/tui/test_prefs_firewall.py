"""The prefs and firewall screens change the store through core."""

from __future__ import annotations

import json

from textual.widgets import DataTable, Input, Static

from qlite.core.qubes import QubeManager
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.screens.firewall import FirewallScreen
from qlite.tui.screens.prefs import PrefsScreen

from .conftest import SIZE, wait_for, wait_for_screen
from .test_qubes_screen import make_qubes, select


def stored_rules(core, name: str) -> list[dict] | None:
    row = core.store.query_one("SELECT rules FROM firewall WHERE qube=?", (name,))
    return None if row is None else json.loads(row["rules"])


async def open_prefs(pilot, app, name: str) -> PrefsScreen:
    await select(pilot, app, name)
    await pilot.press("p")
    await wait_for_screen(pilot, PrefsScreen)
    screen = app.screen
    await wait_for(pilot, lambda: screen.query_one("#prefs", DataTable).row_count > 10, what="the properties")
    return screen


async def edit(pilot, screen: PrefsScreen, prop: str, value: str) -> None:
    table = screen.query_one("#prefs", DataTable)
    table.move_cursor(row=table.get_row_index(prop), animate=False)
    table.focus()
    await pilot.press("enter")
    field = screen.query_one("#value", Input)
    await wait_for(pilot, lambda: field.has_focus, what="the value field")
    field.value = value
    await pilot.press("enter")


async def test_prefs_edit_changes_a_property(core):
    make_qubes(core, "work")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_prefs(pilot, app, "work")
        assert screen.query_one("#prefs", DataTable).get_row("memory")[1] == "400"
        await edit(pilot, screen, "memory", "640")
        await wait_for(pilot, lambda: core.qube_row("work")["memory"] == 640, what="memory to be stored")
        table = screen.query_one("#prefs", DataTable)
        await wait_for(pilot, lambda: table.get_row("memory")[1] == "640", what="the table to show it")
        assert not screen.query_one("#error").text


async def test_prefs_show_features_and_tags(core):
    make_qubes(core, "work", "bare")
    ctx = core.context()
    qm = QubeManager(ctx)
    qm.features.set("work", "net.dns-servers", "9.9.9.9")
    qm.features.set("work", "vm.machine", "q35")
    qm.add_tags("work", ["audited", "project-x"])
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_prefs(pilot, app, "work")
        features = screen.query_one("#features", DataTable)
        await wait_for(pilot, lambda: features.row_count == 2, what="the features")
        assert [list(map(str, features.get_row_at(i))) for i in range(2)] == [
            ["net.dns-servers", "9.9.9.9"],
            ["vm.machine", "q35"],
        ]
        assert str(screen.query_one("#tags", Static).content) == "Tags: audited, project-x"
        await pilot.press("escape")
        screen = await open_prefs(pilot, app, "bare")
        await wait_for(pilot, lambda: str(screen.query_one("#tags", Static).content) == "Tags: (none)")
        assert str(screen.query_one("#features", DataTable).get_row_at(0)[0]) == "(none)"


async def test_prefs_bad_value_shows_one_line_and_changes_nothing(core):
    make_qubes(core, "work")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_prefs(pilot, app, "work")
        await edit(pilot, screen, "memory", "lots")
        error = screen.query_one("#error")
        await wait_for(pilot, lambda: error.text, what="the error line")
        assert error.text == "memory: expected a whole number, got 'lots'"
        await edit(pilot, screen, "netvm", "nosuchqube")
        await wait_for(pilot, lambda: "nosuchqube" in error.text)
        assert error.text == "no such qube for netvm: 'nosuchqube'"
        table = screen.query_one("#prefs", DataTable)
        table.move_cursor(row=table.get_row_index("name"), animate=False)
        await pilot.press("escape", "enter")  # leave the field; read-only properties are not edited
        await wait_for(pilot, lambda: "read-only" in error.text)
    row = core.qube_row("work")
    assert row["memory"] == 400 and row["netvm"] is None


async def test_prefs_reset_netvm_to_default(core):
    make_qubes(core, "work")
    QubeManager(ctx := core.context()).set_pref("work", "netvm", "none")
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_prefs(pilot, app, "work")
        table = screen.query_one("#prefs", DataTable)
        table.move_cursor(row=table.get_row_index("netvm"), animate=False)
        await pilot.press("D")
        await wait_for(pilot, lambda: core.qube_row("work")["netvm"] is None)
        await wait_for(pilot, lambda: table.get_row("netvm")[1:] == ["dom0", "default"])


async def test_firewall_add_delete_reset(core):
    make_qubes(core, "work")
    QubeManager(ctx := core.context()).start("work")  # running: rules load into the kernel at once
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        await pilot.press("f")
        await wait_for_screen(pilot, FirewallScreen)
        screen = app.screen
        table = screen.query_one("#rules", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        assert table.get_row_at(0)[1] == "accept"
        loads = len(core.net_apply.scripts)

        # Added at the end by default, before the selected rule with i.
        await pilot.press("a", *"drop")
        await pilot.press("enter")
        await wait_for(pilot, lambda: table.row_count == 2)
        table.move_cursor(row=0, animate=False)
        await pilot.press("i")
        screen.query_one("#rule", Input).value = "accept dsthost=10.1.2.3 proto=tcp dstports=443"
        await pilot.press("enter")
        await wait_for(pilot, lambda: table.row_count == 3)
        assert stored_rules(core, "work") == [
            {"action": "accept", "dsthost": "10.1.2.3", "proto": "tcp", "dstports": "443"},
            {"action": "accept"},
            {"action": "drop"},
        ]
        assert len(core.net_apply.scripts) > loads
        assert "10.1.2.3" in core.net_apply.scripts[-1][0]

        # A rule core refuses: one line, nothing stored.
        await pilot.press("a")
        screen.query_one("#rule", Input).value = "accept dstports=80"
        await pilot.press("enter")
        error = screen.query_one("#error")
        await wait_for(pilot, lambda: error.text)
        assert error.text == "dstports= needs proto=tcp or proto=udp"
        assert len(stored_rules(core, "work")) == 3

        await pilot.press("escape")  # back to the table
        table.move_cursor(row=1, animate=False)
        await pilot.press("d")
        await wait_for(pilot, lambda: table.row_count == 2)
        assert stored_rules(core, "work") == [
            {"action": "accept", "dsthost": "10.1.2.3", "proto": "tcp", "dstports": "443"},
            {"action": "drop"},
        ]

        await pilot.press("R")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: table.row_count == 1)
        assert stored_rules(core, "work") == [{"action": "accept"}]
        assert "10.1.2.3" not in core.net_apply.scripts[-1][0]
