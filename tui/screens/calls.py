"""One blocking core call at a time, in a worker, for a screen whose
actions change something (devices, anti-evil-maid)."""

from __future__ import annotations

from collections.abc import Callable

from textual.screen import Screen

from qlite.errors import QliteError
from qlite.tui.messages import CallDone
from qlite.tui.widgets.error_line import ErrorLine


class CallingScreen(Screen):
    """A screen with an ``#error`` ErrorLine and a ``load()``. ``busy`` names
    the call that runs; a second one is refused until it is done. A call
    returns what it did, for a notification, or raises QliteError, shown
    in the error line (then nothing changed). The screen is read again
    after every call."""

    busy: str = ""

    def begin(self, action: str) -> bool:
        if self.busy:
            self.notify(f"busy: {self.busy}", severity="warning")
            return False
        self.busy = action
        self.query_one("#error", ErrorLine).clear()
        return True

    def start_call(self, action: str, call: Callable[[], str]) -> None:
        if self.begin(action):
            self.call_started()
            self.run_call(action, call)

    def run_call(self, action: str, call: Callable[[], str]) -> None:
        def job() -> None:
            try:
                done = call()
            except QliteError as exc:
                self.post_message(CallDone(action, error=str(exc)))
                return
            self.post_message(CallDone(action, done))

        self.run_worker(job, thread=True, exclusive=True, group=f"{type(self).__name__}-call", name=action)

    def on_call_done(self, message: CallDone) -> None:
        self.busy = ""
        if message.error:
            self.error(message.error)
        else:
            self.call_succeeded(message.action)
            self.notify(message.done, markup=False)
        self.load()

    def error(self, text: str) -> None:
        self.query_one("#error", ErrorLine).show(text)

    # Hooks for the screen.
    def call_started(self) -> None:
        """A call has just begun (redraw a busy marker, say)."""

    def call_succeeded(self, action: str) -> None:
        """ACTION's call went through, before the screen is read again."""

    def load(self) -> object:
        """Read the screen's data again (subclasses: often a worker)."""
        raise NotImplementedError
