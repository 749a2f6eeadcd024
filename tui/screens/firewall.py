"""A qube's firewall rules (qvm-firewall): list, add in Qubes' rule words,
delete, reset. Changes apply at once, to a running qube too."""

from __future__ import annotations

import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Label

from qlite.errors import QliteError
from qlite.net.firewall import Rule
from qlite.tui.messages import RulesLoaded
from qlite.tui.screens.base import qlite_app
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.widgets.error_line import ErrorLine
from qlite.tui.widgets.key_footer import KeyFooter

COLUMNS = ("NO", "ACTION", "HOST", "PROTOCOL", "PORT(S)", "SPECIAL TARGET", "ICMP TYPE", "EXPIRE", "COMMENT")
ADD_HINT = "rule: accept|drop [dsthost=…] [proto=tcp|udp|icmp] [dstports=N[-M]] [specialtarget=dns] [expire=+S] …"


def rule_cells(number: int, r: Rule) -> tuple:
    expire = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.expire)) if r.expire else ""
    return (
        str(number),
        r.action,
        r.dsthost or "",
        r.proto or "",
        str(r.to_json().get("dstports", "")),
        r.specialtarget or "",
        "" if r.icmptype is None else str(r.icmptype),
        expire,
        r.comment or "",
    )


class FirewallScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "add", "Add"),
        Binding("i", "insert", "Insert before"),
        Binding("d,delete", "delete", "Delete"),
        Binding("R", "reset", "Reset"),
    ]

    def __init__(self, qube: str) -> None:
        super().__init__()
        self.qube = qube
        self.rules: tuple[Rule, ...] = ()
        self.before: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Firewall of {self.qube} (the first matching rule wins; no match drops)", classes="screen-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="rules")
        yield Input(placeholder=ADD_HINT, id="rule")
        yield ErrorLine(id="error")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = f"firewall: {self.qube}"
        self.query_one("#rules", DataTable).add_columns(*COLUMNS)
        self.query_one("#rules", DataTable).focus()
        self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        try:
            self.post_message(RulesLoaded(qlite_app(self).backend.rules(self.qube)))
        except QliteError as exc:
            self.post_message(RulesLoaded((), str(exc)))

    @work(thread=True, exclusive=True)
    def change(self, verb: str, arg: object = None) -> None:
        backend = qlite_app(self).backend
        try:
            if verb == "add":
                assert isinstance(arg, tuple)
                text, before = arg
                rules = backend.add_rule(self.qube, text, before)
            elif verb == "delete":
                assert isinstance(arg, int)
                rules = backend.delete_rule(self.qube, arg)
            else:
                rules = backend.reset_rules(self.qube)
        except QliteError as exc:
            self.post_message(RulesLoaded(self.rules, str(exc)))
            return
        self.post_message(RulesLoaded(rules))

    def on_rules_loaded(self, message: RulesLoaded) -> None:
        errors = self.query_one("#error", ErrorLine)
        errors.show(message.error)
        if message.error:
            return
        field = self.query_one("#rule", Input)
        field.value = ""
        self.before = None
        field.border_title = ""
        self.rules = message.rules
        table = self.query_one("#rules", DataTable)
        table.focus()
        row = table.cursor_row
        table.clear()
        for i, r in enumerate(self.rules):
            table.add_row(*rule_cells(i, r), key=str(i))
        if self.rules:
            table.move_cursor(row=min(row, len(self.rules) - 1), animate=False)

    def action_add(self) -> None:
        self.before = None
        field = self.query_one("#rule", Input)
        field.border_title = "add at the end"
        field.focus()

    def action_insert(self) -> None:
        table = self.query_one("#rules", DataTable)
        self.before = table.cursor_row if self.rules else None
        field = self.query_one("#rule", Input)
        field.border_title = f"insert before rule {self.before}" if self.before is not None else "add at the end"
        field.focus()

    @on(Input.Submitted, "#rule")
    def submit(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.query_one("#error", ErrorLine).show("empty rule: give at least accept or drop")
            return
        self.change("add", (event.value, self.before))

    def action_delete(self) -> None:
        if not self.rules:
            return
        self.change("delete", self.query_one("#rules", DataTable).cursor_row)

    def action_reset(self) -> None:
        def confirmed(yes: bool | None) -> None:
            if yes:
                self.change("reset")

        self.app.push_screen(
            ConfirmScreen(
                f"Reset the firewall of {self.qube} to the single rule 'accept' (everything allowed)?", "Reset"
            ),
            confirmed,
        )

    def action_back(self) -> None:
        field = self.query_one("#rule", Input)
        if field.has_focus:
            field.value = ""
            self.before = None
            self.query_one("#rules", DataTable).focus()
            return
        self.app.pop_screen()
