"""The devices screen over the real DeviceManager: a temporary home, the
fake engine, the shared FakeMounts and a /sys/class/block of the test's
own (real drives and the pyudev watcher are covered by
tests/integration/test_devices.py)."""

from __future__ import annotations

import os

import pytest
from textual.widgets import DataTable, Select, Static

from qlite.core.qubes import QubeManager
from qlite.daemon import device_event
from qlite.tui.screens.device_form import DeviceFormScreen
from qlite.tui.screens.devices import DevicesScreen
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.widgets.state_checkbox import StateCheckbox

from .conftest import SIZE, wait_for, wait_for_screen

# Attaching gives the qube's devices directory to the qube's user and root,
# which only root may do.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving a devices directory to its owners needs root")

UUID = "1234-ABCD"


@pytest.fixture
def drives(core, block):
    """Two qubes, work running (podman is the engine that gets devices),
    and two drives: sdb1 with a filesystem UUID, sdc with neither UUID nor serial."""
    core.engine.gives_devices_to_containers = True
    ctx = core.context()
    qm = QubeManager(ctx)
    qm.create("work", label="blue")
    qm.create("vault", label="black", netvm="none")
    qm.start("work")
    ctx.store.close()
    block.add("sdb1", fs_uuid=UUID, label="STICK", fs_type="vfat", serial="XYZ9")
    block.add("sdc", fs_type="", major_minor="8:32")
    core.mounts.calls.clear()
    return block


def attachment(core, device: str):
    return core.store.query_one("SELECT * FROM device_attachments WHERE device=?", (device,))


def assignments(core) -> list[tuple]:
    return [
        (r["qube"], r["ident"], r["read_only"], r["required"], r["paired"])
        for r in core.store.query("SELECT * FROM device_assignments ORDER BY qube, ident")
    ]


def mounts(core) -> list[tuple]:
    return [c for c in core.mounts.calls if c[0] in ("mount", "umount")]


def log_events(core) -> list[str]:
    path = core.paths.device_log
    return [line for line in path.read_text().splitlines()] if path.exists() else []


async def open_devices(pilot, app) -> DevicesScreen:
    await pilot.press("4")
    await wait_for_screen(pilot, DevicesScreen)
    screen = app.screen
    table = screen.query_one("#devices", DataTable)
    await wait_for(pilot, lambda: table.row_count == 2, what="the device list")
    return screen


async def choose(pilot, screen: DevicesScreen, device: str) -> None:
    table = screen.query_one("#devices", DataTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(device), animate=False)
    await pilot.pause()


def cell(screen: DevicesScreen, device: str, column: str) -> str:
    return str(screen.query_one("#devices", DataTable).get_cell(device, column))


def error(screen) -> str:
    return screen.query_one("#error").text


async def fill_form(pilot, app, qube: str, *, read_only: bool = False, required: bool = False) -> None:
    await wait_for_screen(pilot, DeviceFormScreen)
    form = app.screen
    form.query_one("#qube", Select).value = qube
    form.query_one("#read-only", StateCheckbox).value = read_only
    if required:
        form.query_one("#required", StateCheckbox).value = True
    await pilot.click("#submit")


async def test_the_list_is_live_and_says_what_each_device_is(core, drives):
    app = core.app(refresh_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        assert cell(screen, "sdb1", "ident") == f"uuid:{UUID}" and cell(screen, "sdb1", "label") == "STICK"
        assert cell(screen, "sdc", "ident") == "dev:sdc" and cell(screen, "sdb1", "size") == "16.0 MiB"
        assert cell(screen, "sdb1", "attached") == "-"
        # A drive goes in, another comes out: the list follows without a key pressed.
        drives.add("sdd1", fs_uuid="5678-EF01", label="NEW", major_minor="8:49")
        drives.remove("sdc")
        table = screen.query_one("#devices", DataTable)
        await wait_for(pilot, lambda: sorted(k.value for k in table.rows) == ["sdb1", "sdd1"], what="the new drive")
        # The host has a device mounted (FakeMounts reports 7:99): it says where.
        drives.add("loop9", major_minor="7:99")
        core.mounts.mounted.add("/media/user/stick")
        await wait_for(pilot, lambda: "loop9" in [k.value for k in table.rows])
        assert cell(screen, "loop9", "attached") == "host: /media/user/stick"


async def test_attach_read_only_then_detach(core, drives):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await choose(pilot, screen, "sdb1")
        await pilot.press("a")
        await wait_for_screen(pilot, DeviceFormScreen)
        # Only running qubes are offered.
        assert [value for _, value in app.screen.query_one("#qube", Select)._options if value != Select.NULL] == [
            "work"
        ]
        await fill_form(pilot, app, "work", read_only=True)
        await wait_for(pilot, lambda: cell(screen, "sdb1", "attached") == "work (ro)", what="the attachment")
        row = attachment(core, "sdb1")
        assert (row["qube"], row["read_only"]) == ("work", 1)
        [(_, device, target, options)] = mounts(core)
        assert device == "/dev/sdb1" and target.endswith("/work/sdb1") and options.endswith(",ro")
        assert not error(screen)

        await pilot.press("d")
        await wait_for(pilot, lambda: cell(screen, "sdb1", "attached") == "-", what="the detach")
        assert attachment(core, "sdb1") is None
        assert mounts(core)[-1][:2] == ("umount", target)
        # Both are in the device log, and the log is on the screen.
        events = screen.query_one("#events", DataTable)
        await wait_for(pilot, lambda: events.row_count == 2)
        assert [str(events.get_row_at(i)[1]) for i in range(2)] == ["detach", "attach (ro)"]


async def test_attach_read_write(core, drives):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await choose(pilot, screen, "sdb1")
        await pilot.press("a")
        await fill_form(pilot, app, "work")
        await wait_for(pilot, lambda: cell(screen, "sdb1", "attached") == "work", what="the attachment")
    assert attachment(core, "sdb1")["read_only"] == 0
    assert mounts(core)[0][3].endswith(",rw")


async def test_a_refused_attach_shows_one_line_and_changes_nothing(core, drives):
    drives.add("loop9", major_minor="7:99")
    core.mounts.mounted.add("/media/user/stick")  # the host has it mounted
    core.mounts.calls.clear()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_for_screen(pilot, DevicesScreen)
        screen = app.screen
        table = screen.query_one("#devices", DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        await choose(pilot, screen, "loop9")
        await pilot.press("a")
        await fill_form(pilot, app, "work")
        await wait_for(pilot, lambda: error(screen), what="the error line")
        assert error(screen) == "loop9 is mounted on the host at /media/user/stick: unmount it first"
        assert isinstance(app.screen, DevicesScreen)
        # Detaching what is not attached is refused the same way.
        await choose(pilot, screen, "sdb1")
        await pilot.press("d")
        await wait_for(pilot, lambda: error(screen) == "sdb1 is not attached")
    assert attachment(core, "loop9") is None and attachment(core, "sdb1") is None
    assert mounts(core) == [] and log_events(core) == []


async def test_attach_with_no_qube_running_says_so(core, drives):
    ctx = core.context()
    QubeManager(ctx).kill("work")
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await choose(pilot, screen, "sdb1")
        await pilot.press("a")
        await wait_for(pilot, lambda: error(screen))
        assert "no qube is running" in error(screen) and isinstance(app.screen, DevicesScreen)


async def test_assign_and_unassign(core, drives):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await choose(pilot, screen, "sdb1")
        await pilot.press("s")
        await wait_for_screen(pilot, DeviceFormScreen)
        # Halted qubes may be assigned to; the identity is the drive's most stable one.
        assert app.screen.query_one("#ident").value == f"uuid:{UUID}"
        await fill_form(pilot, app, "vault", read_only=True, required=True)
        await wait_for(pilot, lambda: assignments(core) == [("vault", f"uuid:{UUID}", 1, 1, 0)])
        table = screen.query_one("#assignments", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1, what="the assignment row")
        assert [str(c) for c in table.get_row_at(0)] == ["vault", f"uuid:{UUID}", "required, ro", "sdb1"]
        await wait_for(pilot, lambda: cell(screen, "sdb1", "assigned") == "vault")

        await choose(pilot, screen, "sdb1")
        await pilot.press("u")
        await wait_for(pilot, lambda: assignments(core) == [], what="the unassign")
        await wait_for(pilot, lambda: table.row_count == 0)
        # Nothing left to unassign: one line, nothing changes.
        await pilot.press("u")
        await wait_for(pilot, lambda: error(screen) == "sdb1 is not assigned to any qube")


async def test_a_bad_identity_is_refused_with_one_line(core, drives):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await choose(pilot, screen, "sdb1")
        await pilot.press("s")
        await wait_for_screen(pilot, DeviceFormScreen)
        app.screen.query_one("#ident").value = "label:STICK"
        await fill_form(pilot, app, "vault")
        await wait_for(pilot, lambda: error(screen))
        assert error(screen) == "device identity 'label:STICK': expected uuid:UUID, serial:SERIAL or dev:NAME"
    assert assignments(core) == []


async def test_pair_asks_first(core, drives):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await choose(pilot, screen, "sdb1")
        for answer in ("n", "y"):
            await pilot.press("p")
            await wait_for_screen(pilot, DeviceFormScreen)
            # Only identities that survive re-insertion.
            assert [v for _, v in app.screen.query_one("#ident", Select)._options] == [f"uuid:{UUID}", "serial:XYZ9"]
            await fill_form(pilot, app, "vault")
            await wait_for_screen(pilot, ConfirmScreen)
            assert "vault then runs only while this drive is in" in str(app.screen.question)
            await pilot.press(answer)
            await wait_for(pilot, lambda: isinstance(app.screen, DevicesScreen))
            if answer == "n":
                await pilot.pause(0.1)
                assert assignments(core) == []
        await wait_for(pilot, lambda: assignments(core) == [("vault", f"uuid:{UUID}", 0, 1, 1)])
        table = screen.query_one("#assignments", DataTable)
        await wait_for(pilot, lambda: table.row_count == 1 and str(table.get_row_at(0)[2]) == "paired")

        # A drive with no UUID and no serial cannot be recognised again: no pairing.
        await choose(pilot, screen, "sdc")
        await pilot.press("p")
        await wait_for(pilot, lambda: error(screen))
        assert "sdc has no filesystem UUID and no serial" in error(screen)
        assert isinstance(app.screen, DevicesScreen)


async def test_eject_asks_first_then_syncs_and_detaches(core, drives):
    ctx = core.context()
    QubeManager(ctx).devices.attach("work", "sdb1")
    ctx.store.close()
    core.mounts.calls.clear()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await choose(pilot, screen, "sdb1")
        await pilot.press("e")
        await wait_for_screen(pilot, ConfirmScreen)
        assert str(app.screen.question).startswith("Eject sdb1? qlite syncs it inside work")
        await pilot.press("n")
        await pilot.pause(0.1)
        assert attachment(core, "sdb1") is not None and core.mounts.calls == []

        await pilot.press("e")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: cell(screen, "sdb1", "attached") == "-", what="the eject")
    assert attachment(core, "sdb1") is None
    assert ("sync",) in core.mounts.calls and any(c[0] == "umount" for c in core.mounts.calls)
    assert '"event": "eject"' in log_events(core)[-1]


async def test_a_drive_pulled_without_eject_shows_as_unsafe(core, drives):
    ctx = core.context()
    QubeManager(ctx).devices.attach("work", "sdb1")
    ctx.store.close()
    app = core.app(refresh_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_devices(pilot, app)
        await wait_for(pilot, lambda: cell(screen, "sdb1", "attached") == "work")
        # The drive is yanked; the daemon's watcher reacts as it does to the kernel's event.
        drives.remove("sdb1")
        ctx = core.context()
        device_event(ctx, "remove", "sdb1")
        ctx.store.close()
        table = screen.query_one("#devices", DataTable)
        await wait_for(pilot, lambda: [k.value for k in table.rows] == ["sdc"], what="the drive to go")
        events = screen.query_one("#events", DataTable)
        await wait_for(pilot, lambda: events.row_count == 3, what="the unsafe removal in the log")
        newest = [str(c) for c in events.get_row_at(0)]
        assert newest[1:4] == ["UNSAFE removal", "sdb1", "work"] and "writes not yet on the drive" in newest[4]
        status = str(screen.query_one("#device-status", Static).content)
        assert "1 pulled out without eject" in status
