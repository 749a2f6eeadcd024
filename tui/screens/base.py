"""What the screens reach of the running app, typed: Textual types
``widget.app`` as any App, and the screens need qlite's."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.dom import DOMNode

if TYPE_CHECKING:  # the app imports the screens
    from qlite.tui.app import QliteApp


def qlite_app(node: DOMNode) -> QliteApp:
    return cast("QliteApp", node.app)
