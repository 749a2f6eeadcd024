"""The qube list: one row per qube and template, name in its label colour
and the label named in a column of its own (colour alone says nothing to
some eyes and some terminals).

At narrow widths the less essential columns go, so that NAME, STATE,
LABEL, NETVM, MEM and CPU always fit without scrolling sideways."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Unpack

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from qlite.domain.labels import label_colour
from qlite.domain.preload import READY as PRELOADED
from qlite.tui.backend import QubeRow

if TYPE_CHECKING:
    from qlite.tui.widgets.options import WidgetOptions

# (key, header), in the order shown.
COLUMNS = (
    ("name", "NAME"),
    ("state", "STATE"),
    ("label", "LABEL"),
    ("class", "CLASS"),
    ("mode", "MODE"),
    ("template", "TEMPLATE"),
    ("netvm", "NETVM"),
    ("netpath", "NETPATH"),
    ("mem", "MEM MiB"),
    ("cpu", "CPU"),
)
ESSENTIAL = ("name", "state", "label", "netvm", "mem", "cpu")
DROP_FIRST = ("netpath", "mode", "class", "template")  # what goes first when the table is too narrow
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
    words = (row.name, row.state, row.klass, row.label, row.template or "", row.netvm or "", row.mode, row.netpath)
    needle = text.lower()
    return any(needle in w.lower() for w in words)


def mem_cell(row: QubeRow) -> str:
    """PSS of the qube's processes / its memory limit, while it runs."""
    if row.memory is None or row.usage is None:
        return ""
    return f"{row.usage.pss_mib:.0f}/{row.memory}"


def cpu_cell(row: QubeRow) -> str:
    return f"{row.usage.cpu_percent:.1f}%" if row.usage else ""


def cells(r: QubeRow, busy: str | None) -> dict[str, Text | str]:
    """Every column's cell for R, by column key."""
    colour = label_colour(r.label)
    if busy:
        state = Text(f"{busy}…", style="bold yellow")
    elif PRELOADED in r.tags and r.state == "Running":  # started ahead of time, waiting for a command
        state = Text("Preloaded", style="cyan")
    else:
        state = Text(r.state, style=STATE_STYLES.get(r.state, ""))
    return {
        "name": Text(r.name, style=f"bold {colour}"),
        "state": state,
        "label": Text(r.label, style=colour) if r.label else "",
        "class": r.klass + (f" r{r.revision}" if r.is_template and r.revision is not None else ""),
        "mode": "VM" if r.mode == "vm" else r.mode,
        "template": r.template or "",
        "netvm": r.netvm or ("" if r.is_template else "none"),
        "netpath": r.netpath,
        "mem": mem_cell(r),
        "cpu": cpu_cell(r),
    }


def fitting_columns(widths: dict[str, int], room: int) -> tuple[str, ...]:
    """The columns to show in ROOM cells, given each one's width: drop the
    optional ones in DROP_FIRST order until the rest fit; the essential
    ones stay whatever the room."""
    shown = [key for key, _ in COLUMNS]
    for key in DROP_FIRST:
        if sum(widths[k] for k in shown) <= room:
            break
        shown.remove(key)
    return tuple(shown)


class QubeTable(DataTable):
    """Rows keyed by qube name; the cursor stays on its qube across refreshes."""

    def __init__(self, **kwargs: Unpack[WidgetOptions]) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.shown_columns: tuple[str, ...] = ()
        self._rows: list[QubeRow] = []
        self._busy: dict[str, str] = {}
        self._view = ("", "name")

    def on_mount(self) -> None:
        self._set_columns(tuple(key for key, _ in COLUMNS))

    @property
    def selected(self) -> str | None:
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return key.value

    def show(self, rows: list[QubeRow], busy: dict[str, str], filter_text: str, sort: str) -> None:
        self._rows, self._busy, self._view = rows, dict(busy), (filter_text, sort)
        current = self.selected
        shown = sorted((r for r in rows if matches(r, filter_text)), key=SORTS[sort])
        table = {r.name: cells(r, busy.get(r.name)) for r in shown}
        self._set_columns(self._fitting(list(table.values())))
        self.clear()
        for r in shown:
            self.add_row(*(table[r.name][key] for key in self.shown_columns), key=r.name)
        names = [r.name for r in shown]
        if current in names:
            self.move_cursor(row=names.index(current), animate=False)

    def _fitting(self, rows: list[dict[str, Text | str]]) -> tuple[str, ...]:
        room = self.size.width - self.styles.scrollbar_size_vertical
        if room <= 0:  # not laid out yet
            return self.shown_columns or tuple(key for key, _ in COLUMNS)
        pad = 2 * self.cell_padding
        widths = {key: max([len(header), *(len(str(r[key])) for r in rows)]) + pad for key, header in COLUMNS}
        return fitting_columns(widths, room)

    def _set_columns(self, keys: tuple[str, ...]) -> None:
        if keys == self.shown_columns:
            return
        self.clear(columns=True)
        headers = dict(COLUMNS)
        for key in keys:
            self.add_column(headers[key], key=key)
        self.shown_columns = keys

    def on_resize(self, event: events.Resize) -> None:
        if self._rows:
            self.show(self._rows, self._busy, *self._view)
