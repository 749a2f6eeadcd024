"""One renderer for every command: a human table, or ``--json``."""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from qlite.cli.results import Lines, Markup, Message, Raw, Record, Result, Table


def emit_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


# The labels' colours (qlite.domain.labels) as SGR parameters.
SGR = {
    "red": "31",
    "dark_orange": "38;5;208",
    "yellow": "33",
    "green": "32",
    "grey62": "38;5;247",
    "blue": "34",
    "magenta": "35",
    "bright_black": "90",
}
GAP = "  "


def colour_wanted(stream: object) -> bool:
    """Colour only for a terminal, as NO_COLOR and FORCE_COLOR say."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def printable(value: object) -> str:
    """VALUE as one line of text that is safe to print: a drive's label or a
    rule's comment may hold escape sequences or line breaks, and a terminal
    must not act on them."""
    text = "-" if value is None or value == "" else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def width(text: str) -> int:
    """Columns TEXT takes on a terminal (wide East Asian characters take two)."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1 for ch in text)


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


def show(result: Result | None, as_json: bool) -> int:
    """Print RESULT once: for people, or as JSON when AS_JSON. Returns its
    exit code (None is a command that printed what it had as it went, or
    had nothing to say: 0)."""
    if result is None:
        return 0
    note(result.note)
    if isinstance(result, Raw):
        sys.stdout.write(result.text)
    elif as_json:
        if result.data is not None:
            emit_json(json_ready(result.data))
    else:
        _human(result)
        note(result.footnote)
    sys.stdout.flush()
    return result.exit_code


def _human(result: Result) -> None:
    out = sys.stdout
    if isinstance(result, Table):
        out.write(format_table(result.columns, result.rows, result.colours, colour_wanted(out)))
    elif isinstance(result, Record):
        out.writelines(f"{k:<30} {v}\n" for k, v in result.values.items())
    elif isinstance(result, Message):
        out.write(result.text + "\n")
    elif isinstance(result, Lines):
        out.writelines(line + "\n" for line in result.lines)
    elif isinstance(result, Markup):
        from rich.console import Console  # noqa: PLC0415 - rich is slow to import; only doctor needs it

        console = Console(soft_wrap=True, highlight=False)
        for line in result.lines:
            console.print(line)


def json_ready(data: object) -> object:
    """DATA with every dataclass in it as the dict of its fields."""
    if is_dataclass(data) and not isinstance(data, type):
        return asdict(data)
    if isinstance(data, list | tuple):
        return [json_ready(v) for v in data]
    if isinstance(data, dict):
        return {k: json_ready(v) for k, v in data.items()}
    return data


def error(exc: BaseException) -> None:
    """EXC as qlite's one error line: whatever a qube put into it (a VM's
    console, a name from a stream), a terminal must not act on it."""
    sys.stderr.write(f"qlite: error: {printable(exc)}\n")


def note(text: str) -> None:
    """Lines for people on stderr (nothing for an empty TEXT)."""
    if text:
        info(text)


def progress_printer(quiet: bool = False) -> Callable[[str], None]:
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
