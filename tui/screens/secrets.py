"""Modals of the anti-evil-maid screen: the passphrase a software seal
needs, and the unsealed secret, shown for the user to recognise."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from qlite.tui.widgets.error_line import ErrorLine


def shown_secret(secret: bytes) -> str:
    """The secret as text, with characters a terminal would act on as '?'."""
    text = secret.decode(errors="replace").rstrip("\n")
    return "".join(c if c.isprintable() or c == "\n" else "?" for c in text)


class PassphraseScreen(ModalScreen[bytes | None]):
    """Ask for the passphrase the secret was sealed with."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, why: str) -> None:
        super().__init__()
        self.why = why

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog form"):
            yield Label("Passphrase", classes="dialog-title")
            yield Static(self.why, classes="dialog-note", markup=False)
            yield Input(password=True, placeholder="the passphrase the secret was sealed with", id="passphrase")
            yield ErrorLine(id="error")
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#passphrase", Input).focus()

    @on(Button.Pressed, "#ok")
    @on(Input.Submitted)
    def submit(self) -> None:
        value = self.query_one("#passphrase", Input).value
        if not value:
            self.query_one("#error", ErrorLine).show("give the passphrase")
            return
        self.dismiss(value.encode())

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class SecretScreen(ModalScreen[bool]):
    """The unsealed secret. With enforcement on, the user's yes lets qubes
    start in this boot; otherwise there is nothing to confirm."""

    BINDINGS = [Binding("escape", "answer(False)", "No")]

    def __init__(self, secret: bytes, enforced: bool) -> None:
        super().__init__()
        self.secret = secret
        self.enforced = enforced

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog secret-dialog"):
            yield Label("Anti-evil-maid: the measurements match", classes="dialog-title")
            yield Static(shown_secret(self.secret), id="secret", markup=False)
            yield Static(
                "Is this your secret? If it is not, this machine is not the one you sealed it on, "
                "or it was tampered with: do not trust it.",
                classes="dialog-note",
                markup=False,
            )
            with Horizontal(classes="buttons"):
                if self.enforced:
                    yield Button("Yes, it is mine: let qubes start", variant="success", id="yes")
                    yield Button("No", variant="error", id="no")
                else:
                    yield Button("Close", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
