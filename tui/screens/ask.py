"""The RPC question: may SOURCE call SERVICE+ARGUMENT, and in which target?

Only the policy's choices are offered, and none is preselected unless the
policy names a default_target. The question closes by itself when its
deadline passes (the daemon then denies: no answer means no)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult, ScreenError
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, RadioButton, RadioSet, Static

from qlite.tui.asks import Question

GPG_SERVICE = "qubes.Gpg"


@dataclass(frozen=True)
class AskAnswer:
    allow: bool
    target: str | None


class AskScreen(ModalScreen[AskAnswer | None]):
    """Dismissed with the answer, or with None when the deadline passed."""

    BINDINGS = [
        Binding("a", "allow", "Allow"),
        Binding("d,escape", "deny", "Deny"),
    ]

    def __init__(self, question: Question, clock: Callable[[], float] = time.monotonic, tick: float = 1.0) -> None:
        super().__init__()
        self.question = question
        self.clock = clock
        self.tick = tick
        self.deadline = clock() + question.seconds_left
        self._finished = False

    def compose(self) -> ComposeResult:
        q = self.question
        with Vertical(classes="dialog ask"):
            yield Label(
                "Split GPG: use of a key" if q.service == GPG_SERVICE else "RPC request", classes="dialog-title"
            )
            yield Static(self._summary(), id="summary", markup=False)
            yield Label("Target:")
            with RadioSet(id="targets"):
                for choice in q.choices:
                    yield RadioButton(choice, value=choice == q.default_target, name=choice)
            yield Static(self._countdown_text(), id="countdown")
            with Horizontal(classes="buttons"):
                yield Button("Allow", variant="success", id="allow", disabled=self.selected is None)
                yield Button("Deny", variant="error", id="deny")

    def _summary(self) -> str:
        q = self.question
        lines = [
            f"{q.source} wants to call {q.service}" + (f"+{q.argument}" if q.argument else ""),
            f"requested target: {q.target or '(none)'}",
        ]
        if q.service == GPG_SERVICE:
            lines.append(f"{q.source} asks to use the keys of the vault; a yes stands for the vault's window.")
        return "\n".join(lines)

    def on_mount(self) -> None:
        self.query_one("#targets", RadioSet).focus()
        self.set_interval(self.tick, self.update_countdown)

    @property
    def seconds_left(self) -> int:
        return max(0, round(self.deadline - self.clock()))

    def _countdown_text(self) -> str:
        return f"{self.seconds_left} s left; no answer means deny"

    def update_countdown(self) -> None:
        if self.seconds_left <= 0:
            self.finish(None)
            return
        self.query_one("#countdown", Static).update(self._countdown_text())

    @property
    def selected(self) -> str | None:
        if not self.is_mounted:
            return self.question.default_target if self.question.default_target in self.question.choices else None
        button = self.query_one("#targets", RadioSet).pressed_button
        return None if button is None else button.name

    @on(RadioSet.Changed)
    def _target_chosen(self) -> None:
        self.query_one("#allow", Button).disabled = self.selected is None

    @on(Button.Pressed, "#allow")
    def action_allow(self) -> None:
        target = self.selected
        if target is None:
            self.notify("choose a target first", severity="warning")
            return
        self.finish(AskAnswer(True, target))

    @on(Button.Pressed, "#deny")
    def action_deny(self) -> None:
        self.finish(AskAnswer(False, None))

    def finish(self, answer: AskAnswer | None) -> None:
        """Dismiss once (a timer tick and a key may race), from the top."""
        if self._finished:
            return
        self._finished = True
        if not self.is_active:
            with contextlib.suppress(ScreenError):
                self.pop_until_active()
        self.dismiss(answer)
