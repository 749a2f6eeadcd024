"""The qube list: one row per qube and template, name in its label colour."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.widgets import DataTable

from qlite.core.labels import label_colour
from qlite.core.preload import READY as PRELOADED
from tui.backend import QubeRow

COLUMNS = ("NAME", "STATE", "CLASS", "MODE", "TEMPLATE", "NETVM", "NETPATH", "MEM MiB", "CPU")
STATE_STYLES = {"Running": "bold green", "Paused": "yellow", "Transient": "yellow", "Halted": "dim"}
STATE_ORDER = {"Running": 0, "Paused": 1, "Transient": 2, "Halted": 3}

SortKey = Callable[[QubeRow], tuple]
# name -> (key, description). Every order keeps names as the tie-break.
SORTS: dict[str, SortKey] = {
    "name": lambda r: (not r.is_template, r.name),
    "state": lambda r: (STATE_ORDER.get(r.state, 9), r.name),
    "class": lambda r: (r.klass, r.name),
    "label": lambda r: (r.label, r.name),
    "memory": lambda r: (-(r.usage.pss_mib if r.usage else -1.0), r.name),
    "cpu": lambda r: (-(r.usage.cpu_percent if r.usage else -1.0), r.name),
}


def matches(row: QubeRow, text: str) -> bool:
    """Case-insensitive substring match on every shown word."""
    if not text:
        return True
    words = (row.name, row.state, row.klass, row.label, row.template or "", row.netvm or "", row.mode,
             row.netpath)
    needle = text.lower()
    return any(needle in w.lower() for w in words)


def mem_cell(row: QubeRow) -> str:
    """PSS of the qube's processes / its memory limit, while it runs."""
    if row.memory is None or row.usage is None:
        return ""
    return f"{row.usage.pss_mib:.0f}/{row.memory}"


def cpu_cell(row: QubeRow) -> str:
    return f"{row.usage.cpu_percent:.1f}%" if row.usage else ""


class QubeTable(DataTable):
    """Rows keyed by qube name; the cursor stays on its qube across refreshes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    @property
    def selected(self) -> str | None:
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return key.value

    def show(self, rows: list[QubeRow], busy: dict[str, str], filter_text: str, sort: str) -> None:
        current = self.selected
        shown = sorted((r for r in rows if matches(r, filter_text)), key=SORTS[sort])
        self.clear()
        for r in shown:
            self.add_row(*self.cells(r, busy.get(r.name)), key=r.name)
        names = [r.name for r in shown]
        if current in names:
            self.move_cursor(row=names.index(current), animate=False)

    @staticmethod
    def cells(r: QubeRow, busy: str | None) -> tuple:
        name = Text(r.name, style=f"bold {label_colour(r.label)}")
        if busy:
            state = Text(f"{busy}…", style="bold yellow")
        elif PRELOADED in r.tags and r.state == "Running":  # started ahead of time, waiting for a command
            state = Text("Preloaded", style="cyan")
        else:
            state = Text(r.state, style=STATE_STYLES.get(r.state, ""))
        klass = r.klass + (f" r{r.revision}" if r.is_template and r.revision is not None else "")
        mode = "VM" if r.mode == "vm" else r.mode
        return (name, state, klass, mode, r.template or "", r.netvm or ("" if r.is_template else "none"),
                r.netpath, mem_cell(r), cpu_cell(r))
