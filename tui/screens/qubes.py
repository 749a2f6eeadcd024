"""The qube list and everything done to a qube from it."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Header, Input, Log, Static

from qlite.errors import QliteError
from qlite.tui.backend import QubeRow, Snapshot
from qlite.tui.messages import (
    ActionDone,
    CommandExited,
    CommandOutput,
    QubesRefreshed,
    RefreshFailed,
)
from qlite.tui.runner import SHELL, Intro
from qlite.tui.screens.base import qlite_app
from qlite.tui.screens.create import CloneScreen, CreateQubeScreen
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.screens.firewall import FirewallScreen
from qlite.tui.screens.nav import nav_bindings
from qlite.tui.screens.prefs import PrefsScreen
from qlite.tui.screens.run import RunRequest, RunScreen
from qlite.tui.widgets.key_footer import KeyFooter
from qlite.tui.widgets.qube_table import SORTS, QubeTable

ACTIVITY_LINES = 1000
SMALL_HEIGHT = 30  # below it the activity log gives its lines to the qube list
# action -> what the state column says while it runs
BUSY_WORDS = {
    "start": "Starting",
    "shutdown": "Stopping",
    "kill": "Killing",
    "remove": "Removing",
    "pause": "Pausing",
    "unpause": "Resuming",
    "terminal": "Starting",
}


class QubesScreen(Screen):
    BINDINGS = [
        Binding("n", "create", "New"),
        Binding("s", "start", "Start"),
        Binding("h", "shutdown", "Shutdown"),
        Binding("k", "kill", "Kill"),
        Binding("x,delete", "remove", "Remove"),
        Binding("p", "prefs", "Prefs"),
        Binding("f", "firewall", "Firewall"),
        Binding("t", "terminal", "Terminal"),
        Binding("r", "run", "Run"),
        Binding("d", "disposable", "Disposable"),
        Binding("c", "clone", "Clone"),
        Binding("z", "pause", "Pause"),
        Binding("Z", "unpause", "Unpause"),
        Binding("slash", "filter", "Filter"),
        Binding("o", "sort", "Sort"),
        Binding("escape", "clear_filter", "Clear filter", show=False),  # said in the filter's placeholder
        Binding("f5,ctrl+r", "refresh", "Refresh", show=False),  # the list refreshes itself
        *nav_bindings("qubes"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = Snapshot(rows=())
        self.busy: dict[str, str] = {}
        self.sort = "name"
        self._refreshing = False
        self._refresh_again = False
        self._error_shown = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="/ to filter (esc clears): name, state, class, label, template, netvm…", id="filter")
        yield QubeTable(id="qubes")
        yield Static("", id="status", markup=False)
        yield Log(max_lines=ACTIVITY_LINES, id="activity")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "qubes"
        self.query_one("#activity", Log).border_title = "activity"
        self.query_one(QubeTable).focus()
        self.refresh_qubes()
        interval = qlite_app(self).refresh_interval
        if interval:
            self.set_interval(interval, self.refresh_qubes)

    # -- refreshing ------------------------------------------------------------

    def refresh_qubes(self) -> None:
        """Read the list again, unless a read is already under way (then
        once more after it, so that the newest state always shows)."""
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self._read_snapshot()

    @work(thread=True, exclusive=True, group="refresh")
    def _read_snapshot(self) -> None:
        try:
            self.post_message(QubesRefreshed(qlite_app(self).backend.snapshot()))
        except QliteError as exc:
            self.post_message(RefreshFailed(str(exc)))

    def on_qubes_refreshed(self, message: QubesRefreshed) -> None:
        self.snapshot = message.snapshot
        self._error_shown = ""
        self._done_refreshing()
        self.redraw()

    def on_refresh_failed(self, message: RefreshFailed) -> None:
        if message.error != self._error_shown:  # once per distinct failure, not every 2 s
            self._error_shown = message.error
            self.log_activity(f"cannot read the qube list: {message.error}")
        self._done_refreshing()
        self.update_status(message.error)

    def _done_refreshing(self) -> None:
        self._refreshing = False
        if self._refresh_again:
            self._refresh_again = False
            self.refresh_qubes()

    def redraw(self) -> None:
        table = self.query_one(QubeTable)
        table.show(list(self.snapshot.rows), self.busy, self.query_one("#filter", Input).value.strip(), self.sort)
        self.update_status()

    def update_status(self, error: str = "") -> None:
        rows = [r for r in self.snapshot.rows if not r.is_template]
        running = sum(1 for r in rows if r.state == "Running")
        parts = [f"{len(rows)} qubes, {running} running", f"sort: {self.sort}"]
        text = self.query_one("#filter", Input).value.strip()
        if text:
            parts.append(f"filter: {text}")
        if error:
            parts.append(f"error: {error}")
        self.query_one("#status", Static).update(" · ".join(parts))

    def on_resize(self) -> None:
        self.query_one("#activity", Log).set_class(self.size.height < SMALL_HEIGHT, "-small")

    def log_activity(self, line: str) -> None:
        self.query_one("#activity", Log).write_line(line)

    # -- selection -------------------------------------------------------------

    def selected(self, *, qube_only: bool = True) -> QubeRow | None:
        name = self.query_one(QubeTable).selected
        row = self.snapshot.row(name) if name else None
        if row is None:
            self.notify("no qube selected", severity="warning")
            return None
        if qube_only and row.is_template:
            self.notify(f"{row.name} is a template: manage it on the Templates screen (2)", severity="warning")
            return None
        return row

    # -- filter and sort -------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.redraw()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one(QubeTable).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self.query_one(QubeTable).focus()

    def action_sort(self) -> None:
        keys = list(SORTS)
        self.sort = keys[(keys.index(self.sort) + 1) % len(keys)]
        self.redraw()

    def action_refresh(self) -> None:
        self.refresh_qubes()

    # -- lifecycle actions -----------------------------------------------------

    def start_call(self, name: str, action: str, call: Callable[[], object]) -> None:
        """Run CALL (a blocking core call) for qube NAME in a worker. One
        action per qube at a time: the row shows it until it ends."""
        if name in self.busy:
            self.notify(f"{name} is busy: {self.busy[name].lower()}", severity="warning")
            return
        self.busy[name] = BUSY_WORDS.get(action, action.capitalize() + "ing")
        self.redraw()

        def job() -> None:
            try:
                call()
            except QliteError as exc:
                self.post_message(ActionDone(name, action, str(exc)))
                return
            self.post_message(ActionDone(name, action))

        # Exclusive within the qube's own group: different qubes' actions run
        # side by side, and a qube never has two.
        self.run_worker(job, thread=True, exclusive=True, group=f"qube:{name}", name=f"{action} {name}")

    def on_action_done(self, message: ActionDone) -> None:
        self.busy.pop(message.qube, None)
        if message.error:
            self.log_activity(f"{message.action} {message.qube} failed: {message.error}")
            qlite_app(self).show_error(message.error)
        elif message.action == "terminal":
            self.redraw()
            row = self.snapshot.row(message.qube)
            intro = Intro.for_qube(
                message.qube, row.label if row else "", "terminal", "exit the shell to return to qlite"
            )
            self.interactive(f"terminal in {message.qube}", ["run", "-t", message.qube, "--", *SHELL], intro=intro)
        else:
            self.log_activity(f"{message.action} {message.qube}: done")
        self.refresh_qubes()
        self.redraw()

    def action_start(self) -> None:
        row = self.selected()
        if row is not None:
            self.start_call(row.name, "start", lambda: qlite_app(self).backend.start(row.name))

    def action_shutdown(self) -> None:
        row = self.selected()
        if row is not None:
            self.start_call(row.name, "shutdown", lambda: qlite_app(self).backend.shutdown(row.name))

    def action_pause(self) -> None:
        row = self.selected()
        if row is not None:
            self.start_call(row.name, "pause", lambda: qlite_app(self).backend.pause(row.name))

    def action_unpause(self) -> None:
        row = self.selected()
        if row is not None:
            self.start_call(row.name, "unpause", lambda: qlite_app(self).backend.unpause(row.name))

    def _confirmed(self, question: str, label: str, then: Callable[[], None]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.app.push_screen(ConfirmScreen(question, label), answered)

    def action_kill(self) -> None:
        row = self.selected()
        if row is None:
            return
        name = row.name
        self._confirmed(
            f"Kill {name} now? Its processes stop at once and unsaved work is lost.",
            "Kill",
            lambda: self.start_call(name, "kill", lambda: qlite_app(self).backend.kill(name)),
        )

    def action_remove(self) -> None:
        row = self.selected()
        if row is None:
            return
        name = row.name
        self._confirmed(
            f"Remove {name} and its private data (/home/user, /rw)? This cannot be undone.",
            "Remove",
            lambda: self.start_call(name, "remove", lambda: qlite_app(self).backend.remove(name)),
        )

    # -- forms -----------------------------------------------------------------

    def action_create(self) -> None:
        def created(name: str | None) -> None:
            if name:
                self.log_activity(f"created {name}")
                self.refresh_qubes()

        self.app.push_screen(CreateQubeScreen(self.snapshot), created)

    def action_clone(self) -> None:
        row = self.selected()
        if row is None:
            return
        source = row.name

        def cloned(name: str | None) -> None:
            if name:
                self.log_activity(f"cloned {source} as {name}")
                self.refresh_qubes()

        self.app.push_screen(CloneScreen(source), cloned)

    def action_prefs(self) -> None:
        row = self.selected()
        if row is not None:
            self.app.push_screen(PrefsScreen(row.name))

    @on(QubeTable.RowSelected)
    def _row_chosen(self) -> None:
        self.action_prefs()

    def action_firewall(self) -> None:
        row = self.selected()
        if row is not None:
            self.app.push_screen(FirewallScreen(row.name))

    # -- terminals and commands ------------------------------------------------

    def action_terminal(self) -> None:
        """Start the qube first (so that a failure shows as an error
        dialog), then hand the terminal to ``qlite run -t NAME -- shell``."""
        row = self.selected()
        if row is not None:
            name = row.name
            self.start_call(name, "terminal", lambda: qlite_app(self).backend.start(name, skip_if_running=True))

    def interactive(self, title: str, args: list[str], *, intro: Intro | None = None, hold: bool = False) -> None:
        try:
            code = qlite_app(self).runner.interactive(self.app, args, intro=intro, hold=hold)
        except Exception as exc:  # noqa: BLE001 - e.g. SuspendNotSupported: say so, keep the TUI
            qlite_app(self).show_error(f"cannot hand over the terminal: {exc or type(exc).__name__}")
            return
        self.log_activity(f"{title}: exited with {code}")
        self.refresh_qubes()

    def action_run(self) -> None:
        row = self.selected()
        if row is not None:
            self.app.push_screen(RunScreen(row.name, []), self._run_requested)

    def action_disposable(self) -> None:
        snap = self.snapshot
        self.app.push_screen(RunScreen(None, snap.dispvm_templates, snap.default_dispvm), self._run_requested)

    def _run_requested(self, request: RunRequest | None) -> None:
        if request is None:
            return
        if request.terminal:
            # A command in a terminal shows its output until a key is pressed.
            self.interactive(request.title, request.cli_args(), intro=self._intro(request), hold=True)
            return
        self.log_activity(f"$ {request.title}")
        self.capture(request.title, request.cli_args())
        # A disposable appears in the list while it runs.
        self.set_timer(1.0, self.refresh_qubes)

    def _intro(self, request: RunRequest) -> Intro:
        what = shlex.join(request.argv)
        if request.qube is not None:
            row = self.snapshot.row(request.qube)
            return Intro.for_qube(request.qube, row.label if row else "", what)
        dvm = request.dvm or self.snapshot.default_dispvm
        row = self.snapshot.row(dvm)
        return Intro.for_qube(
            f"a new disposable of {dvm or 'default_dispvm'}", row.label if row else "", what, tag="[disposable]"
        )

    def capture(self, title: str, args: list[str]) -> None:
        def job() -> None:
            code = qlite_app(self).runner.capture(args, lambda line: self.post_message(CommandOutput(title, line)))
            self.post_message(CommandExited(title, code))

        # Commands run side by side, each in a group of its own.
        self.run_worker(job, thread=True, exclusive=True, group=f"command:{id(job)}", name=title)

    def on_command_output(self, message: CommandOutput) -> None:
        self.log_activity(f"  {message.line}")

    def on_command_exited(self, message: CommandExited) -> None:
        self.log_activity(f"{message.title}: exited with {message.code}")
        self.refresh_qubes()
