"""The qube list and the actions on it, driven with Pilot over a fake core."""

from __future__ import annotations

from textual.widgets import Input, Log, Select

from qlite.core.qubes import QubeManager
from qlite.domain.spec import container_name
from qlite.errors import EngineError
from qlite.tui.screens.create import CloneScreen, CreateQubeScreen
from qlite.tui.screens.dialogs import ConfirmScreen, ErrorScreen
from qlite.tui.screens.run import RunScreen
from qlite.tui.widgets.qube_table import QubeTable
from qlite.tui.widgets.state_checkbox import StateCheckbox

from .conftest import SIZE, TEMPLATE, wait_for, wait_for_screen

# Creating a private volume chowns /rw/home/user to uid 1000.


def make_qubes(core, *names: str, label: str = "blue") -> None:
    ctx = core.context()
    for name in names:
        QubeManager(ctx).create(name, label=label)
    ctx.store.close()
    core.engine.calls.clear()


def table(app) -> QubeTable:
    return app.screen.query_one(QubeTable)


def cell(app, name: str, column: str) -> str:
    """The text of NAME's cell in COLUMN (a column key: name, state, label, class, mode, template, netvm,
    netpath, mem, cpu)."""
    return str(table(app).get_cell(name, column))


async def select(pilot, app, name: str) -> None:
    await wait_for(pilot, lambda: name in [k.value for k in table(app).rows], what=f"row {name}")
    table(app).move_cursor(row=table(app).get_row_index(name), animate=False)
    await pilot.pause()


def running(core, name: str) -> bool:
    info = core.engine.inspect_container(container_name(core.paths.home_hash, name))
    return info is not None and info.state == "running"


async def test_list_shows_qubes_templates_and_states(core):
    make_qubes(core, "work", "vault")
    QubeManager(ctx := core.context()).start("work")
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "vault")
        rows = {k.value for k in table(app).rows}
        assert rows == {"work", "vault", TEMPLATE}
        assert cell(app, "work", "state") == "Running"
        assert cell(app, "vault", "state") == "Halted"
        assert cell(app, TEMPLATE, "class") == "TemplateVM r1"
        assert cell(app, "work", "template") == TEMPLATE and cell(app, "work", "netvm") == "dom0"
        assert cell(app, "work", "netpath") == "netstack"
        assert cell(app, "work", "mem") == "64/400" and cell(app, "work", "cpu") == "1.5%"
        assert cell(app, "vault", "mem") == "" and cell(app, "vault", "cpu") == ""
        # The name is drawn in its label's colour, and the label is named in words too.
        assert table(app).get_row("work")[0].style == "bold blue"
        assert cell(app, "work", "label") == "blue" and cell(app, TEMPLATE, "label") == "black"


async def test_a_preloaded_disposable_shows_as_preloaded_with_its_memory(core):
    make_qubes(core, "work")
    ctx = core.context()
    qm = QubeManager(ctx)
    qm.start("work")
    qm.add_tags("work", ["preloaded"])  # what the daemon's pool tags a ready member with
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        assert cell(app, "work", "state") == "Preloaded"
        assert cell(app, "work", "mem") == "64/400"


async def test_filter_and_sort(core):
    make_qubes(core, "alpha", "beta", "gamma")
    QubeManager(ctx := core.context()).start("gamma")
    ctx.store.close()
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "alpha")
        await pilot.press("slash", "b", "e", "t")
        await wait_for(pilot, lambda: table(app).row_count == 1)
        assert [k.value for k in table(app).rows] == ["beta"]
        await pilot.press("enter", "escape")
        assert app.screen.query_one("#filter", Input).value == ""
        await wait_for(pilot, lambda: table(app).row_count == 4)
        await pilot.press("o")  # sort by state: the running qube first
        assert [k.value for k in table(app).rows][0] == "gamma"


async def test_create_through_the_form(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, TEMPLATE)
        await pilot.press("n")
        await wait_for_screen(pilot, CreateQubeScreen)
        form = app.screen
        # The global default_template is preselected.
        assert form.query_one("#template", Select).value == TEMPLATE
        await pilot.press(*"mail")
        form.query_one("#label", Select).value = "yellow"
        form.query_one("#netvm", Select).value = "none"
        form.query_one("#memory", Input).value = "512"
        await pilot.click("#create")
        await wait_for(pilot, lambda: not isinstance(app.screen, CreateQubeScreen), what="the form to close")
        await select(pilot, app, "mail")
    row = core.qube_row("mail")
    assert (row["class"], row["label"], row["template"], row["netvm"], row["memory"]) == (
        "AppVM",
        "yellow",
        TEMPLATE,
        "",
        512,
    )
    assert [args[0] for args in core.calls("create_volume")] == [f"qlite-{core.paths.home_hash}-mail-private"]


async def test_create_form_offers_mode_vcpus_memory_and_provides_network(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        for name, mode, vcpus, gateway in (("sys-gw", "container", "3", True), ("hvm", "vm", "1", False)):
            await pilot.press("n")
            await wait_for_screen(pilot, CreateQubeScreen)
            form = app.screen
            # Qubes' defaults are filled in.
            assert (form.query_one("#mode", Select).value, form.query_one("#vcpus", Input).value) == ("container", "2")
            assert form.query_one("#provides_network", StateCheckbox).value is False
            await pilot.press(*name)
            form.query_one("#mode", Select).value = mode
            form.query_one("#vcpus", Input).value = vcpus
            form.query_one("#memory", Input).value = "640"
            form.query_one("#provides_network", StateCheckbox).value = gateway
            await pilot.click("#create")
            await wait_for(pilot, lambda: not isinstance(app.screen, CreateQubeScreen), what="the form to close")
    gw, hvm = core.qube_row("sys-gw"), core.qube_row("hvm")
    assert (gw["mode"], gw["vcpus"], gw["memory"], gw["provides_network"]) == ("container", 3, 640, 1)
    assert (hvm["mode"], hvm["vcpus"], hvm["memory"], hvm["provides_network"]) == ("vm", 1, 640, 0)


async def test_create_form_refuses_a_vm_gateway_with_one_line(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for_screen(pilot, CreateQubeScreen)
        form = app.screen
        await pilot.press(*"gw")
        form.query_one("#mode", Select).value = "vm"
        form.query_one("#provides_network", StateCheckbox).value = True
        await pilot.click("#create")
        error = form.query_one("#error")
        await wait_for(pilot, lambda: error.text, what="an error line")
        assert error.text == "gw is a VM-mode qube; VM-mode gateways are not available in this version"
        assert isinstance(app.screen, CreateQubeScreen)
    assert core.qube_row("gw") is None


async def test_create_form_shows_a_rejected_name_and_stays_open(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for_screen(pilot, CreateQubeScreen)
        await pilot.press(*"disp12", "enter")
        error = app.screen.query_one("#error")
        await wait_for(pilot, lambda: error.text, what="an error line")
        assert isinstance(app.screen, CreateQubeScreen)
        assert "\n" not in error.text and "disp12" in error.text
    assert core.qube_row("disp12") is None
    assert core.calls("create_volume") == []


async def test_start_shutdown_kill_and_remove(core):
    make_qubes(core, "work")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        await pilot.press("s")
        await wait_for(pilot, lambda: cell(app, "work", "state") == "Running", what="work to run")
        assert running(core, "work") and core.calls("start")

        await pilot.press("h")
        await wait_for(pilot, lambda: cell(app, "work", "state") == "Halted", what="work to halt")
        assert core.calls("stop") and not running(core, "work")

        await pilot.press("s")
        await wait_for(pilot, lambda: cell(app, "work", "state") == "Running")
        core.engine.calls.clear()
        await pilot.press("k")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("n")  # declined: nothing happens
        await pilot.pause(0.1)
        assert core.calls("remove_container") == [] and running(core, "work")
        await pilot.press("k")
        await wait_for_screen(pilot, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: cell(app, "work", "state") == "Halted", what="work to be killed")
        assert core.calls("remove_container") and core.calls("stop") == []

        await pilot.press("x")
        await wait_for_screen(pilot, ConfirmScreen)
        assert "work" in str(app.screen.question)
        await pilot.press("y")
        await wait_for(pilot, lambda: "work" not in [k.value for k in table(app).rows], what="the row to go")
    assert core.qube_row("work") is None
    assert core.calls("remove_volume") == [(f"qlite-{core.paths.home_hash}-work-private",)]


async def test_engine_error_shows_its_one_line_in_a_dialog(core):
    make_qubes(core, "work")
    core.engine.fail["start"] = EngineError("podman: start qlite-x-work: OCI runtime error")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        await pilot.press("s")
        await wait_for_screen(pilot, ErrorScreen, what="an error dialog")
        assert app.screen.message == "podman: start qlite-x-work: OCI runtime error"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, ErrorScreen))
        await wait_for(pilot, lambda: cell(app, "work", "state") == "Halted")
        assert "start work failed: podman: start" in "\n".join(app.screen.query_one("#activity", Log).lines)
    assert not running(core, "work")


async def test_terminal_starts_the_qube_then_hands_over(core):
    make_qubes(core, "work")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        await pilot.press("t")
        await wait_for(pilot, lambda: core.runner.interactive_calls, what="the terminal")
        assert running(core, "work")
        args = core.runner.interactive_calls[0]
        assert args[:4] == ["run", "-t", "work", "--"]
        assert "bash" in args[-1] and "/bin/sh" in args[-1]


async def test_a_terminal_says_which_qube_it_is_in_its_label_colour(core, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    make_qubes(core, "work", label="purple")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        await pilot.press("t")
        await wait_for(pilot, lambda: core.runner.interactive_calls, what="the terminal")
    [options] = core.runner.interactive_options
    intro = options["intro"]
    assert intro.title == "[work] terminal"
    # The first line: the tag in the label's colour (purple is drawn magenta: SGR 35), the label in words.
    assert intro.line.startswith("\x1b[1;35m[work]\x1b[0m terminal in work (label purple)")
    assert options["hold"] is False  # the user leaves the shell on purpose


async def test_run_in_a_terminal_keeps_its_output_until_a_key(core):
    make_qubes(core, "work", label="green")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        await pilot.press("r")
        await wait_for_screen(pilot, RunScreen)
        await pilot.press(*"ls -l")
        app.screen.query_one("#terminal", StateCheckbox).value = True
        await pilot.press("enter")
        await wait_for(pilot, lambda: core.runner.interactive_calls, what="the command")
    assert core.runner.interactive_calls == [["run", "-t", "work", "--", "ls", "-l"]]
    [options] = core.runner.interactive_options
    assert options["hold"] is True
    assert options["intro"].title == "[work] ls -l" and "(label green)" in options["intro"].line


async def test_the_terminal_checkbox_shows_its_state(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await wait_for_screen(pilot, RunScreen)
        box = app.screen.query_one("#terminal", StateCheckbox)

        def mark() -> str:
            return str(box.render()).split(" in a terminal")[0]

        assert "X" not in mark()
        box.focus()
        await pilot.press("space")
        assert box.value is True and "X" in mark()
        await pilot.press("space")
        assert box.value is False and "X" not in mark()


async def test_disposable_command_output_goes_to_the_activity_log(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await wait_for_screen(pilot, RunScreen)
        await pilot.press(*"echo 'a b'", "enter")
        await wait_for(pilot, lambda: core.runner.capture_calls)
        log = app.screen.query_one("#activity", Log)
        await wait_for(pilot, lambda: any("exited with 0" in line for line in log.lines))
        assert "  hello from the qube" in log.lines
    assert core.runner.capture_calls == [["run", "--disposable", "--", "echo", "a b"]]


async def test_templates_are_not_started(core):
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, TEMPLATE)
        await pilot.press("s")
        await pilot.pause(0.1)
    assert core.calls("start") == [] and core.calls("create_container") == []


async def test_clone_through_the_form(core):
    make_qubes(core, "work")
    app = core.app()
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, "work")
        await pilot.press("c")
        await wait_for_screen(pilot, CloneScreen)
        assert app.screen.query_one("#name", Input).value == "work-clone"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, CloneScreen), what="the form to close")
        await select(pilot, app, "work-clone")
    assert core.qube_row("work-clone")["label"] == "blue"
