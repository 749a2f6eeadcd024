"""The form that runs a command in a qube or in a new disposable."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from qlite.tui.widgets.error_line import ErrorLine
from qlite.tui.widgets.state_checkbox import StateCheckbox

DEFAULT_DVM = ""  # the global default_dispvm


@dataclass(frozen=True)
class RunRequest:
    """What to run: ARGV in QUBE, or in a disposable of DVM ('' = default)."""

    argv: list[str]
    terminal: bool
    qube: str | None = None
    dvm: str = DEFAULT_DVM

    def cli_args(self) -> list[str]:
        """``qlite run`` arguments for this request."""
        tty = ["-t"] if self.terminal else []
        if self.qube is not None:
            return ["run", *tty, self.qube, "--", *self.argv]
        dvm = ["--dvm", self.dvm] if self.dvm else []
        return ["run", "--disposable", *dvm, *tty, "--", *self.argv]

    @property
    def title(self) -> str:
        where = self.qube or f"disposable ({self.dvm or 'default_dispvm'})"
        return f"{where}: {shlex.join(self.argv)}"


class RunScreen(ModalScreen[RunRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, qube: str | None, dispvm_templates: list[str], default_dispvm: str = "") -> None:
        super().__init__()
        self.qube = qube
        self.dispvm_templates = dispvm_templates
        self.default_dispvm = default_dispvm

    def compose(self) -> ComposeResult:
        title = f"Run a command in {self.qube}" if self.qube else "Run a command in a new disposable"
        with Vertical(classes="dialog form"):
            yield Label(title, classes="dialog-title")
            if self.qube is None:
                options = [(f"default ({self.default_dispvm or 'not set'})", DEFAULT_DVM)]
                options += [(n, n) for n in self.dispvm_templates]
                with Horizontal(classes="field"):
                    yield Label("From")
                    yield Select(options, value=DEFAULT_DVM, allow_blank=False, id="dvm")
            with Horizontal(classes="field"):
                yield Label("Command")
                yield Input(placeholder="e.g. curl -sI https://example.org", id="command")
            yield StateCheckbox("in a terminal (its output stays until you press a key)", id="terminal")
            yield ErrorLine(id="error")
            with Horizontal(classes="buttons"):
                yield Button("Run", variant="primary", id="run")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#command", Input).focus()

    @on(Button.Pressed, "#run")
    @on(Input.Submitted)
    def submit(self) -> None:
        text = self.query_one("#command", Input).value
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            self.query_one("#error", ErrorLine).show(f"command: {exc}")
            return
        if not argv:
            self.query_one("#error", ErrorLine).show("give a command to run")
            return
        dvm = str(self.query_one("#dvm", Select).value) if self.qube is None else DEFAULT_DVM
        self.dismiss(
            RunRequest(argv=argv, terminal=self.query_one("#terminal", StateCheckbox).value, qube=self.qube, dvm=dvm)
        )

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
