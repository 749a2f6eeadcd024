"""The eight Qubes labels and the colour each is drawn in."""

from __future__ import annotations

from qlite.errors import InvalidValue

# name -> (Qubes label index, rich colour)
LABELS: dict[str, tuple[int, str]] = {
    "red": (1, "red"),
    "orange": (2, "dark_orange"),
    "yellow": (3, "yellow"),
    "green": (4, "green"),
    "gray": (5, "grey62"),
    "blue": (6, "blue"),
    "purple": (7, "magenta"),
    "black": (8, "bright_black"),
}


def validate_label(label: str) -> str:
    if label not in LABELS:
        raise InvalidValue(f"unknown label {label!r}: choose one of {', '.join(LABELS)}")
    return label


def label_colour(label: str) -> str:
    return LABELS.get(label, (0, "default"))[1]
