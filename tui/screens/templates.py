"""Templates: their revisions, and build, update and revert with the
progress of the long ones streamed into a log."""

from __future__ import annotations

import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Label, Log

from qlite.errors import QliteError
from qlite.tui.backend import TemplateRow
from qlite.tui.messages import TemplateJobDone, TemplateProgress, TemplatesLoaded
from qlite.tui.screens.base import qlite_app
from qlite.tui.screens.dialogs import ConfirmScreen, ErrorScreen
from qlite.tui.screens.nav import nav_bindings
from qlite.tui.widgets.key_footer import KeyFooter

LOG_LINES = 2000


class TemplatesScreen(Screen):
    BINDINGS = [
        Binding("b", "build", "Build"),
        Binding("u", "update", "Update"),
        Binding("v", "revert", "Revert"),
        Binding("r", "reload", "Reload"),
        *nav_bindings("templates"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.templates: list[TemplateRow] = []
        self.busy: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("Templates", classes="screen-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="templates")
        yield Label("Revisions (qubes start from the current one, marked *)", classes="section-title")
        yield DataTable(cursor_type="row", id="revisions")
        yield Log(max_lines=LOG_LINES, id="progress")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "templates"
        self.query_one("#templates", DataTable).add_columns("TEMPLATE", "REVISION", "IMAGE", "ORIGIN", "USED BY", "")
        self.query_one("#revisions", DataTable).add_columns("", "REV", "ORIGIN", "IMAGE", "CREATED")
        self.query_one("#progress", Log).border_title = "progress"
        self.query_one("#templates", DataTable).focus()
        self.load()

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.load()

    def load(self) -> None:
        # A load thread cannot be stopped, so an older one may answer after
        # a newer one (say, from before a revert): only the latest is shown.
        self._loads = getattr(self, "_loads", 0) + 1
        self._load(self._loads)

    @work(thread=True, group="load")
    def _load(self, seq: int) -> None:
        try:
            self.post_message(TemplatesLoaded(qlite_app(self).backend.templates(), seq=seq))
        except QliteError as exc:
            self.post_message(TemplatesLoaded([], str(exc), seq=seq))

    def on_templates_loaded(self, message: TemplatesLoaded) -> None:
        if message.seq != self._loads:
            return
        if message.error:
            self.query_one("#progress", Log).write_line(f"error: {message.error}")
            return
        self.templates = message.templates
        table = self.query_one("#templates", DataTable)
        row = table.cursor_row
        table.clear()
        for t in self.templates:
            rev = "(not built)" if not t.built else str(t.current_rev or "")
            table.add_row(
                t.name,
                rev,
                t.image_id[:12],
                t.origin,
                ", ".join(t.users),
                f"{self.busy[t.name]}…" if t.name in self.busy else "",
                key=t.name,
            )
        if self.templates:
            table.move_cursor(row=min(row, len(self.templates) - 1), animate=False)
        self.show_revisions()

    @property
    def selected(self) -> TemplateRow | None:
        table = self.query_one("#templates", DataTable)
        if not self.templates or table.cursor_row >= len(self.templates):
            return None
        return self.templates[table.cursor_row]

    @on(DataTable.RowHighlighted, "#templates")
    def show_revisions(self) -> None:
        table = self.query_one("#revisions", DataTable)
        table.clear()
        t = self.selected
        if t is None:
            return
        for r in t.revisions:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
            table.add_row("*" if r.current else "", str(r.rev), r.origin, r.image_id[:12], created)

    def _start(self, action: str, verb: str) -> TemplateRow | None:
        t = self.selected
        if t is None:
            return None
        if t.name in self.busy:
            self.notify(f"{t.name} is busy: {self.busy[t.name]}", severity="warning")
            return None
        self.busy[t.name] = verb
        self.query_one("#progress", Log).write_line(f"== {action} {t.name}")
        self.load()
        return t

    def action_build(self) -> None:
        t = self._start("build", "building")
        if t is not None:
            self.run_job(t.name, "build")

    def action_update(self) -> None:
        t = self.selected
        if t is not None and not t.built:
            self.app.push_screen(ErrorScreen(f"template {t.name!r} is not built yet: build it first (b)"))
            return
        t = self._start("update", "updating")
        if t is not None:
            self.run_job(t.name, "update")

    def action_revert(self) -> None:
        t = self.selected
        if t is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes and self._start("revert", "reverting") is not None:
                self.run_job(t.name, "revert")

        self.app.push_screen(
            ConfirmScreen(
                f"Revert {t.name} to its previous revision? Revision {t.current_rev} is discarded; "
                "qubes use the older one from their next start.",
                "Revert",
            ),
            confirmed,
        )

    def run_job(self, name: str, action: str) -> None:
        # One worker per template: exclusive within the template's group, so
        # jobs on different templates may run side by side.
        self.run_worker(lambda: self._job(name, action), thread=True, exclusive=True, group=f"template:{name}")

    def _job(self, name: str, action: str) -> None:
        backend = qlite_app(self).backend

        def progress(line: str) -> None:
            self.post_message(TemplateProgress(line))

        try:
            if action == "build":
                rev = backend.build_template(name, progress)
            elif action == "update":
                rev = backend.update_template(name, progress)
            else:
                rev = backend.revert_template(name)
        except QliteError as exc:
            self.post_message(TemplateJobDone(name, action, None, str(exc)))
            return
        self.post_message(TemplateJobDone(name, action, rev))

    def on_template_progress(self, message: TemplateProgress) -> None:
        self.query_one("#progress", Log).write_line(message.line)

    def on_template_job_done(self, message: TemplateJobDone) -> None:
        self.busy.pop(message.template, None)
        log = self.query_one("#progress", Log)
        if message.error:
            log.write_line(f"error: {message.error}")
            qlite_app(self).show_error(message.error)
        else:
            log.write_line(f"== {message.template}: {message.action} done, now at revision {message.revision}")
        self.load()

    def action_reload(self) -> None:
        self.load()
