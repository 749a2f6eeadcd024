"""The footer, wrapped onto as many lines as the terminal's width needs.

Textual's Footer is one line: at 80 columns the qube list's keys ran off
its end. This one packs the same keys into rows, so every key the screen
offers stays visible, however narrow the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from textual import events
from textual.app import ComposeResult
from textual.containers import HorizontalGroup
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

if TYPE_CHECKING:
    from qlite.tui.widgets.options import WidgetOptions


def key_width(key: Widget) -> int:
    """Columns a compact FooterKey takes, its right margin included."""
    if not isinstance(key, FooterKey):
        return 1 << 16  # anything else gets a row of its own
    return len(key.key_display) + (1 + len(key.description) if key.description else 0) + 1


def pack(widths: list[int], width: int) -> list[int]:
    """How many keys go on each row, filling rows in order: a row holds
    keys while they fit (the last one's margin may overhang)."""
    rows: list[int] = []
    used = 0
    for w in widths:
        if rows and used + w - 1 <= width:
            rows[-1] += 1
            used += w
        else:
            rows.append(1)
            used = w
    return rows


class KeyFooter(Footer):
    DEFAULT_CSS = """
    KeyFooter > .key-row {
        width: 100%;
        height: 1;
    }
    """

    def __init__(self, **kwargs: Unpack[WidgetOptions]) -> None:
        super().__init__(compact=True, show_command_palette=False, **kwargs)
        # Footer's own DEFAULT_CSS (one horizontal line) outranks a subclass's.
        self.styles.layout = "vertical"
        self.styles.height = "auto"
        self._widths: list[int] = []
        self._rows: list[int] = []

    def _width(self) -> int:
        return self.size.width or self.screen.size.width or self.app.size.width

    def compose(self) -> ComposeResult:
        keys = list(super().compose())
        self._widths = [key_width(k) for k in keys]
        self._rows = pack(self._widths, self._width())
        start = 0
        for count in self._rows:
            yield HorizontalGroup(*keys[start : start + count], classes="key-row")
            start += count

    def on_resize(self, event: events.Resize) -> None:
        if self._widths and pack(self._widths, event.size.width) != self._rows:
            self.call_after_refresh(self.recompose)
