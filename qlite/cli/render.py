"""One renderer for every command: a human table, or ``--json``."""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


# The labels' colours (qlite.core.labels) as SGR parameters.
SGR = {
    "red": "31", "dark_orange": "38;5;208", "yellow": "33", "green": "32",
    "grey62": "38;5;247", "blue": "34", "magenta": "35", "bright_black": "90",
}
GAP = "  "


def colour_wanted(stream: Any) -> bool:
    """Colour only for a terminal, as NO_COLOR and FORCE_COLOR say."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def printable(value: Any) -> str:
    """VALUE as one line of text that is safe to print: a drive's label or a
    rule's comment may hold escape sequences or line breaks, and a terminal
    must not act on them."""
    text = "-" if value is None or value == "" else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def width(text: str) -> int:
    """Columns TEXT takes on a terminal (wide East Asian characters take two)."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
               for ch in text)


def format_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    colours: Sequence[str | None] | None = None,
    colour: bool = False,
) -> str:
    """ROWS under COLUMNS, aligned, two spaces apart, never wrapped (a
    listing stays one line per row whatever the width of the terminal).
    With COLOUR, the header is bold and row i's first cell is bold in
    COLOURS[i]."""
    cells = [[printable(v) for v in row] for row in rows]
    widths = [max([width(c), *(width(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str], first_style: str | None) -> str:
        padded = [v + " " * (w - width(v)) for v, w in zip(values, widths, strict=True)]
        if first_style:
            padded[0] = f"\x1b[{first_style}m{values[0]}\x1b[0m" + " " * (widths[0] - width(values[0]))
        return GAP.join(padded).rstrip()

    header = line(list(columns), None)
    out = [f"\x1b[1m{header}\x1b[0m" if colour else header]
    for i, row in enumerate(cells):
        code = SGR.get(colours[i] or "") if colour and colours else None
        out.append(line(row, f"1;{code}" if code else None))
    return "\n".join(out) + "\n"


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    colours: Sequence[str | None] | None = None,
) -> None:
    """Print ROWS under COLUMNS; COLOURS[i] colours row i's first cell."""
    sys.stdout.write(format_table(columns, rows, colours, colour_wanted(sys.stdout)))
    sys.stdout.flush()


def progress_printer(quiet: bool = False):
    """A progress callback that writes long-running work's steps to stderr."""

    def progress(line: str) -> None:
        if quiet or not line:
            return
        sys.stderr.write(f"  {line}\n")
        sys.stderr.flush()

    return progress


def info(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
