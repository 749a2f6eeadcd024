"""One line that says what went wrong (a QliteError's message), or nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from textual.widgets import Static

if TYPE_CHECKING:
    from qlite.tui.widgets.options import WidgetOptions


class ErrorLine(Static):
    def __init__(self, **kwargs: Unpack[WidgetOptions]) -> None:
        super().__init__("", markup=False, **kwargs)
        self._text = ""

    def show(self, message: str) -> None:
        self._text = message.splitlines()[0] if message else ""
        self.update(self._text)
        self.set_class(bool(self._text), "-shown")

    def clear(self) -> None:
        self.show("")

    @property
    def text(self) -> str:
        return self._text
