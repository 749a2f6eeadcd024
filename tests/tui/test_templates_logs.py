"""The templates screen (revisions, update with progress, revert) and the
logs screen."""

from __future__ import annotations

from textual.widgets import DataTable, Log

from qlite.rpc import audit
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.screens.logs import LogsScreen
from qlite.tui.screens.templates import TemplatesScreen

from .conftest import IMAGE_ID, SIZE, TEMPLATE, wait_for, wait_for_screen


def current_rev(core) -> int:
    return core.store.query_one("SELECT current_rev FROM templates WHERE name=?", (TEMPLATE,))["current_rev"]


async def open_templates(pilot, app) -> TemplatesScreen:
    await pilot.press("2")
    await wait_for_screen(pilot, TemplatesScreen)
    screen = app.screen
    await wait_for(pilot, lambda: screen.query_one("#templates", DataTable).row_count >= 1)
    return screen


async def test_templates_list_revisions(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_templates(pilot, app)
        row = screen.query_one("#templates", DataTable).get_row(TEMPLATE)
        assert row[:4] == [TEMPLATE, "1", IMAGE_ID[:12], "build"]
        revisions = screen.query_one("#revisions", DataTable)
        await wait_for(pilot, lambda: revisions.row_count == 1)
        assert revisions.get_row_at(0)[:3] == ["*", "1", "build"]
        await pilot.press("1")
        await wait_for(pilot, lambda: not isinstance(app.screen, TemplatesScreen))


async def test_update_streams_progress_then_revert(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_templates(pilot, app)
        await pilot.press("u")
        log = screen.query_one("#progress", Log)
        await wait_for(pilot, lambda: any("done, now at revision 2" in line for line in log.lines), what="update")
        assert f"updating {TEMPLATE} (revision 1)" in log.lines  # the next number is known once it changed
        assert current_rev(core) == 2
        assert [c[0] for c in core.engine.calls if c[0] == "update_image"] == ["update_image"]
        revisions = screen.query_one("#revisions", DataTable)
        await wait_for(pilot, lambda: revisions.row_count == 2)
        assert [revisions.get_row_at(i)[:2] for i in range(2)] == [["", "1"], ["*", "2"]]

        await pilot.press("v")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: any("revert done, now at revision 1" in line for line in log.lines))
        await wait_for(pilot, lambda: revisions.row_count == 1)
        assert current_rev(core) == 1


async def test_logs_show_rpc_audit_and_daemon_log(core):
    audit.append(
        core.paths.rpc_log,
        {
            "source": "work",
            "target": "vault",
            "service": "qubes.Filecopy",
            "decision": "allow",
            "resolved": "vault",
            "rule": "90-default.policy:12",
        },
    )
    audit.append(
        core.paths.rpc_log,
        {"source": "work", "target": "@default", "service": "qubes.Gpg", "decision": "deny", "reason": "no answer"},
    )
    core.paths.daemon_log.parent.mkdir(parents=True, exist_ok=True)
    core.paths.daemon_log.write_text("qlite daemon: listening for work\nqlite daemon: rescan\n")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for_screen(pilot, LogsScreen)
        table = app.screen.query_one("#rpc", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2)
        newest, oldest = table.get_row_at(0), table.get_row_at(1)
        assert newest[1:5] == ["work", "@default", "qubes.Gpg", "deny"] and newest[7] == "no answer"
        assert oldest[1:5] == ["work", "vault", "qubes.Filecopy", "allow"] and oldest[6] == "90-default.policy:12"
        daemon = app.screen.query_one("#daemon", Log)
        assert list(daemon.lines) == ["qlite daemon: listening for work", "qlite daemon: rescan"]


async def test_a_slow_older_load_does_not_overwrite_a_newer_one(core):
    """Loads run in threads that cannot be stopped: one from before a change
    may answer after the one from after it, and must then be ignored."""
    import threading

    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_templates(pilot, app)
        real = app.backend.templates
        stale = real()  # the list as it is now: revision 1
        release = threading.Event()

        def slow_then_real(calls=[]):  # noqa: B006 - counts calls
            calls.append(1)
            if len(calls) == 1:
                release.wait(10)
                return stale
            return real()

        app.backend.templates = slow_then_real
        screen.load()  # slow: answers last, with the old list
        core.store.execute(
            "INSERT INTO template_revisions(template, rev, image_id, origin, created_at) VALUES(?, 2, ?, 'update', 0)",
            (TEMPLATE, IMAGE_ID),
        )
        core.store.execute("UPDATE templates SET current_rev=2 WHERE name=?", (TEMPLATE,))
        screen.load()  # fast: the newer list
        table = screen.query_one("#templates", DataTable)
        await wait_for(pilot, lambda: table.get_row(TEMPLATE)[1] == "2", what="the newer list")
        release.set()
        await pilot.pause(0.5)
        assert table.get_row(TEMPLATE)[1] == "2"
