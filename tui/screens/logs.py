"""The RPC audit log (every request, decision and exit code) and the
daemon's own log."""

from __future__ import annotations

import time

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Log, TabbedContent, TabPane

from qlite.errors import QliteError
from qlite.tui.messages import LogsLoaded
from qlite.tui.screens.base import qlite_app
from qlite.tui.screens.nav import nav_bindings
from qlite.tui.widgets.key_footer import KeyFooter

RPC_COLUMNS = ("TIME", "SOURCE", "TARGET", "SERVICE", "DECISION", "EXIT", "RULE", "REASON")


def rpc_cells(r: dict) -> tuple:
    if "malformed" in r:
        return ("", "", "", "", "malformed", "", "", r["malformed"])
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("time", 0)))
    service = str(r.get("service", "?")) + (f"+{r['argument']}" if r.get("argument") else "")
    target = r.get("resolved") or r.get("target") or "?"
    reason = r.get("reason") if r.get("reason") and r.get("decision") != "done" else ""
    return (
        when,
        str(r.get("source", "?")),
        str(target),
        service,
        str(r.get("decision", "?")),
        str(r.get("exit", "")),
        str(r.get("rule") or ""),
        str(reason or ""),
    )


class LogsScreen(Screen):
    BINDINGS = [
        Binding("r", "reload", "Reload"),
        *nav_bindings("logs"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="logtabs"):
            with TabPane("RPC audit", id="rpc-tab"):
                yield DataTable(cursor_type="row", zebra_stripes=True, id="rpc")
            with TabPane("Daemon log", id="daemon-tab"):
                yield Log(id="daemon")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "logs"
        self.query_one("#rpc", DataTable).add_columns(*RPC_COLUMNS)
        self.load()

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        backend = qlite_app(self).backend
        try:
            self.post_message(LogsLoaded(backend.rpc_log(), backend.daemon_log()))
        except QliteError as exc:
            self.post_message(LogsLoaded([], [], str(exc)))

    def on_logs_loaded(self, message: LogsLoaded) -> None:
        if message.error:
            self.notify(message.error, severity="error", markup=False)
            return
        table = self.query_one("#rpc", DataTable)
        table.clear()
        for r in reversed(message.rpc):  # newest first
            table.add_row(*rpc_cells(r))
        log = self.query_one("#daemon", Log)
        log.clear()
        log.write_lines(message.daemon)
        log.scroll_end(animate=False)

    def action_reload(self) -> None:
        self.load()
