"""A checkbox that shows its state in text, not only in colour."""

from __future__ import annotations

from textual.widgets import Checkbox


class StateCheckbox(Checkbox):
    """Textual's Checkbox draws an X whether it is checked or not, and
    tells the two apart by colour alone; this one draws the X only when
    checked."""

    @property
    def BUTTON_INNER(self) -> str:  # type: ignore[override]
        return "X" if self.value else " "
