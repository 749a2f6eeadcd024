"""One renderer for every command: a human table, or ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    colours: Sequence[str | None] | None = None,
) -> None:
    """Print ROWS under COLUMNS; COLOURS[i] colours row i's first cell."""
    from rich.console import Console  # noqa: PLC0415 - rich is slow to import
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    t = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for c in columns:
        t.add_column(c)
    for i, row in enumerate(rows):
        cells = ["-" if v is None or v == "" else str(v) for v in row]
        colour = colours[i] if colours else None
        first = Text(cells[0], style=f"bold {colour}") if colour else Text(cells[0])
        t.add_row(first, *cells[1:])
    Console(soft_wrap=True).print(t)


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
