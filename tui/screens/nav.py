"""Keys 1-5 switch between the top-level screens (the app's modes)."""

from __future__ import annotations

from textual.binding import Binding

MODES = (
    ("1", "qubes", "Qubes"),
    ("2", "templates", "Templates"),
    ("3", "logs", "Logs"),
    ("4", "devices", "Devices"),
    ("5", "aem", "AEM"),
)


def nav_bindings(current: str) -> list[Binding]:
    """Footer entries for the other screens."""
    return [Binding(key, f"app.switch_mode('{mode}')", title) for key, mode, title in MODES if mode != current]
