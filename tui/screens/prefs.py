"""A qube's properties (qvm-prefs): pick one, edit its value, Enter saves.
A rejected value shows core's one-line reason under the field. Its
features (qvm-features) and tags (qvm-tags) are shown below."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Label, Static

from qlite.errors import QliteError
from qlite.tui.backend import Pref
from qlite.tui.messages import PrefSaved, PrefsLoaded
from qlite.tui.screens.base import qlite_app
from qlite.tui.widgets.error_line import ErrorLine
from qlite.tui.widgets.key_footer import KeyFooter

RESETTABLE = ("netvm", "default_dispvm")


class PrefsScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("e", "edit", "Edit"),
        Binding("D", "reset", "Reset to default"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self, qube: str) -> None:
        super().__init__()
        self.qube = qube
        self.prefs: list[Pref] = []
        self.editing: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Properties of {self.qube}", classes="screen-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="prefs")
        yield Label("Select a property and press Enter (or e) to edit it.", id="hint")
        yield Input(id="value", disabled=True)
        yield ErrorLine(id="error")
        yield Label("Features (qlite features NAME KEY VALUE)", classes="section-title")
        yield DataTable(cursor_type="row", id="features")
        yield Static("Tags: ", id="tags", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = f"prefs: {self.qube}"
        self.query_one("#prefs", DataTable).add_columns("PROPERTY", "VALUE", "")
        self.query_one("#features", DataTable).add_columns("FEATURE", "VALUE")
        self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        backend = qlite_app(self).backend
        try:
            prefs = backend.prefs(self.qube)
            features, tags = backend.features_and_tags(self.qube)
        except QliteError as exc:
            self.post_message(PrefsLoaded([], str(exc)))
            return
        self.post_message(PrefsLoaded(prefs, features=features, tags=tags))

    def on_prefs_loaded(self, message: PrefsLoaded) -> None:
        if message.error:
            self.query_one("#error", ErrorLine).show(message.error)
            return
        self.prefs = message.prefs
        table = self.query_one("#prefs", DataTable)
        row = table.cursor_row
        table.clear()
        for p in self.prefs:
            note = "read-only" if p.read_only else "default" if p.is_default else ""
            table.add_row(p.name, p.value, note, key=p.name)
        table.move_cursor(row=min(row, len(self.prefs) - 1), animate=False)
        features = self.query_one("#features", DataTable)
        features.clear()
        for key, value in sorted(message.features.items()):
            features.add_row(key, value, key=key)
        if not message.features:
            features.add_row("(none)", "")
        self.query_one("#tags", Static).update("Tags: " + (", ".join(message.tags) or "(none)"))

    @property
    def selected(self) -> Pref | None:
        table = self.query_one("#prefs", DataTable)
        if not self.prefs or table.cursor_row >= len(self.prefs):
            return None
        return self.prefs[table.cursor_row]

    @on(DataTable.RowSelected)
    def action_edit(self) -> None:
        pref = self.selected
        if pref is None:
            return
        errors = self.query_one("#error", ErrorLine)
        if pref.read_only:
            errors.show(f"property {pref.name!r} is read-only")
            return
        errors.clear()
        self.editing = pref.name
        field = self.query_one("#value", Input)
        field.disabled = False
        field.border_title = pref.name
        field.value = pref.value
        field.focus()

    @on(Input.Submitted, "#value")
    def save(self, event: Input.Submitted) -> None:
        if self.editing is None:
            return
        self.store(self.editing, event.value)

    @work(thread=True, exclusive=True)
    def store(self, prop: str, value: str) -> None:
        try:
            qlite_app(self).backend.set_pref(self.qube, prop, value)
        except QliteError as exc:
            self.post_message(PrefSaved(prop, str(exc)))
            return
        self.post_message(PrefSaved(prop))

    def action_reset(self) -> None:
        pref = self.selected
        if pref is None:
            return
        if pref.name not in RESETTABLE:
            self.query_one("#error", ErrorLine).show(f"property {pref.name!r} has no default to reset to")
            return
        self.reset(pref.name)

    @work(thread=True, exclusive=True)
    def reset(self, prop: str) -> None:
        try:
            qlite_app(self).backend.reset_pref(self.qube, prop)
        except QliteError as exc:
            self.post_message(PrefSaved(prop, str(exc)))
            return
        self.post_message(PrefSaved(prop))

    def on_pref_saved(self, message: PrefSaved) -> None:
        if message.error:
            self.query_one("#error", ErrorLine).show(message.error)
            return
        self.query_one("#error", ErrorLine).clear()
        self.notify(f"{self.qube}: {message.prop} saved")
        self._stop_editing()
        self.load()

    def _stop_editing(self) -> None:
        self.editing = None
        field = self.query_one("#value", Input)
        field.value = ""
        field.border_title = ""
        field.disabled = True
        self.query_one("#prefs", DataTable).focus()

    def action_reload(self) -> None:
        self.load()

    def action_back(self) -> None:
        if self.editing is not None:
            self.query_one("#error", ErrorLine).clear()
            self._stop_editing()
            return
        self.app.pop_screen()
