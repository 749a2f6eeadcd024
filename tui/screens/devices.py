"""Removable block devices (qvm-device): the list, kept live while the
screen shows (the daemon's watcher keeps the store up to date as drives
come and go); attach and detach, read-only or not; assign and unassign;
pair and eject, each after a confirmation; and the device log, where a
drive pulled out without eject shows as an UNSAFE removal."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import DataTable, Header, Label, Static

from qlite.devices.manager import DeviceRow
from qlite.domain.labels import label_colour
from qlite.errors import QliteError
from qlite.tui.backend import Assignment, DevicesView
from qlite.tui.messages import DevicesLoaded
from qlite.tui.screens.base import qlite_app
from qlite.tui.screens.calls import CallingScreen
from qlite.tui.screens.device_form import DeviceFormScreen, DeviceRequest, pair_idents
from qlite.tui.screens.dialogs import ConfirmScreen
from qlite.tui.screens.nav import nav_bindings
from qlite.tui.widgets.error_line import ErrorLine
from qlite.tui.widgets.key_footer import KeyFooter

DEVICE_COLUMNS = (
    ("device", "DEVICE"),
    ("size", "SIZE"),
    ("ident", "IDENT"),
    ("label", "LABEL"),
    ("attached", "ATTACHED TO"),
    ("assigned", "ASSIGNED TO"),
)
ASSIGNMENT_COLUMNS = ("QUBE", "IDENT", "HOW", "PRESENT")
EVENT_COLUMNS = ("TIME", "EVENT", "DEVICE", "QUBE", "DETAIL")
IDENT_WIDTH = 24


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def qube_text(name: str, labels: dict[str, str], suffix: str = "") -> Text:
    return Text(name, style=f"bold {label_colour(labels.get(name, ''))}") + Text(suffix)


def device_cells(r: DeviceRow, labels: dict[str, str]) -> tuple:
    dev = r.device
    if r.attached_to:
        attached: Text | str = qube_text(r.attached_to, labels, " (ro)" if r.read_only else "")
    else:
        attached = f"host: {r.host_mounts[0]}" if r.host_mounts else "-"
    return (
        dev.name,
        size_text(dev.size),
        short(dev.ident, IDENT_WIDTH),
        dev.label or "-",
        attached,
        ", ".join(r.assigned_to) or "-",
    )


def assignment_cells(a: Assignment, labels: dict[str, str]) -> tuple:
    how = "paired" if a.paired else "required" if a.required else "assigned"
    return (
        qube_text(a.qube, labels),
        short(a.ident, IDENT_WIDTH + 16),
        how + (", ro" if a.read_only else ""),
        a.present or "absent",
    )


def event_cells(e: dict) -> tuple:
    if "malformed" in e:
        return ("", "malformed", "", "", str(e["malformed"]))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("time", 0)))
    kind = str(e.get("event", "?"))
    detail = str(e.get("detail") or e.get("error") or "")
    if e.get("unsafe"):
        event: Text | str = Text("UNSAFE removal", style="bold red")
    elif kind == "attach":
        event = "attach" + (" (ro)" if e.get("read_only") else "")
    elif kind == "detach" and e.get("gone"):
        event, detail = "detach", detail or "the device was gone"
    else:
        event = kind
    return (when, event, str(e.get("device", "")), str(e.get("qube", "")), detail)


class DevicesScreen(CallingScreen):
    BINDINGS = [
        Binding("a", "attach", "Attach"),
        Binding("d", "detach", "Detach"),
        Binding("s", "assign", "Assign"),
        Binding("u", "unassign", "Unassign"),
        Binding("p", "pair", "Pair"),
        Binding("e", "eject", "Eject"),
        Binding("r", "reload", "Reload"),
        *nav_bindings("devices"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.view = DevicesView((), (), (), ())
        self.busy = ""
        self._loading = False
        self._load_again = False
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(cursor_type="row", zebra_stripes=True, id="devices")
        yield Static("", id="device-status", markup=False)
        yield Label(
            "Assigned and paired (attached at each start; paired: runs only while the drive is in)",
            classes="section-title",
        )
        yield DataTable(cursor_type="row", id="assignments")
        yield Label("Device log, newest first (UNSAFE: pulled out without eject)", classes="section-title")
        yield DataTable(cursor_type="row", id="events")
        yield ErrorLine(id="error")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.sub_title = "devices"
        devices = self.query_one("#devices", DataTable)
        for key, header in DEVICE_COLUMNS:
            devices.add_column(header, key=key)
        self.query_one("#assignments", DataTable).add_columns(*ASSIGNMENT_COLUMNS)
        self.query_one("#events", DataTable).add_columns(*EVENT_COLUMNS)
        devices.focus()
        self.load()
        if qlite_app(self).refresh_interval:
            self._timer = self.set_interval(qlite_app(self).refresh_interval, self.load)

    # The list is read only while it shows (each read probes every device).
    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def on_screen_resume(self) -> None:
        if self._timer is not None:
            self._timer.resume()
        if self.is_mounted:
            self.load()

    # -- reading ---------------------------------------------------------------

    def load(self) -> None:
        """Read the list again, unless a read is under way (then once more
        after it, so that the newest state always shows)."""
        if self._loading:
            self._load_again = True
            return
        self._loading = True
        self._read()

    @work(thread=True, exclusive=True, group="devices-load")
    def _read(self) -> None:
        try:
            self.post_message(DevicesLoaded(qlite_app(self).backend.devices()))
        except QliteError as exc:
            self.post_message(DevicesLoaded(None, str(exc)))

    def on_devices_loaded(self, message: DevicesLoaded) -> None:
        self._loading = False
        if message.view is None:
            self.query_one("#device-status", Static).update(f"cannot read the devices: {message.error}")
        else:
            self.view = message.view
            self.redraw()
        if self._load_again:
            self._load_again = False
            self.load()

    def redraw(self) -> None:
        view = self.view
        labels = {q.name: q.label for q in view.qubes}
        _fill(self.query_one("#devices", DataTable), [(r.device.name, device_cells(r, labels)) for r in view.devices])
        _fill(
            self.query_one("#assignments", DataTable),
            [(f"{a.qube}\0{a.ident}", assignment_cells(a, labels)) for a in view.assignments],
        )
        _fill(
            self.query_one("#events", DataTable),
            [(str(i), event_cells(e)) for i, e in reversed(list(enumerate(view.events)))],
        )
        attached = sum(1 for r in view.devices if r.attached_to)
        unsafe = sum(1 for e in view.events if e.get("unsafe"))
        parts = [f"{len(view.devices)} devices, {attached} attached"]
        if unsafe:
            parts.append(f"{unsafe} pulled out without eject (see the log)")
        if self.busy:
            parts.append(f"{self.busy}…")
        self.query_one("#device-status", Static).update(" · ".join(parts))

    # -- selection -------------------------------------------------------------

    def selected_device(self) -> DeviceRow | None:
        table = self.query_one("#devices", DataTable)
        row = None
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            row = self.view.device(key) if key is not None else None
        if row is None:
            self.error("no device selected (none is present?)")
        return row

    def selected_assignment(self) -> Assignment | None:
        """The assignment row under the cursor when that table has focus;
        else the one assignment of the selected device."""
        table = self.query_one("#assignments", DataTable)
        if table.has_focus and table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            return next((a for a in self.view.assignments if f"{a.qube}\0{a.ident}" == key), None)
        row = self.selected_device()
        if row is None:
            return None
        mine = [a for a in self.view.assignments if row.device.matches(a.ident)]
        if not mine:
            self.error(f"{row.device.name} is not assigned to any qube")
            return None
        if len(mine) > 1:
            table.focus()
            self.error(f"{row.device.name} is assigned to {len(mine)} qubes: choose one in this table, then u")
            return None
        return mine[0]

    # -- actions -----------------------------------------------------------------

    def call_started(self) -> None:
        self.redraw()  # the status line shows what runs

    def _form(self, kind: str, row: DeviceRow, then: Callable[[DeviceRequest], None]) -> None:
        qubes = [q for q in self.view.qubes if q.running or kind != "attach"]
        if not qubes:
            self.error(
                "no qube is running: start one first, or assign the device (s)"
                if kind == "attach"
                else "there is no qube to give it to: create one first"
            )
            return

        def answered(request: DeviceRequest | None) -> None:
            if request is not None:
                then(request)

        self.app.push_screen(DeviceFormScreen(kind, row, qubes), answered)

    def action_attach(self) -> None:
        row = self.selected_device()
        if row is None:
            return
        backend = qlite_app(self).backend

        def attach(r: DeviceRequest) -> None:
            self.start_call(
                f"attaching {row.device.name}",
                lambda: (
                    f"{backend.attach_device(r.qube, row.device.name, r.read_only)} attached to {r.qube}"
                    + (" read-only" if r.read_only else "")
                ),
            )

        self._form("attach", row, attach)

    def action_detach(self) -> None:
        row = self.selected_device()
        if row is not None:
            name = row.device.name
            self.start_call(
                f"detaching {name}", lambda: f"detached {', '.join(qlite_app(self).backend.detach_device(name))}"
            )

    def action_assign(self) -> None:
        row = self.selected_device()
        if row is None:
            return

        def assign(r: DeviceRequest) -> None:
            self.start_call("assigning", lambda: self._assign(r, paired=False))

        self._form("assign", row, assign)

    def _assign(self, r: DeviceRequest, paired: bool) -> str:
        qlite_app(self).backend.assign_device(
            r.qube, r.ident, read_only=r.read_only, required=r.required, paired=paired
        )
        return f"{r.ident} {'paired with' if paired else 'assigned to'} {r.qube}"

    def action_unassign(self) -> None:
        a = self.selected_assignment()
        if a is None:
            return

        def unassign() -> str:
            qlite_app(self).backend.unassign_device(a.qube, a.ident)
            return f"{a.ident} unassigned from {a.qube}"

        self.start_call("unassigning", unassign)

    def action_pair(self) -> None:
        row = self.selected_device()
        if row is None:
            return
        if not pair_idents(row):
            self.error(
                f"{row.device.name} has no filesystem UUID and no serial, so it cannot be recognised "
                "when it comes back: assign it instead (s)"
            )
            return

        def confirm(r: DeviceRequest) -> None:
            def answered(yes: bool | None) -> None:
                if yes:
                    self.start_call("pairing", lambda: self._assign(r, paired=True))

            self.app.push_screen(
                ConfirmScreen(
                    f"Pair {r.ident} with {r.qube}? {r.qube} then runs only while this drive is in: inserting it "
                    f"starts {r.qube}, pulling it out stops {r.qube} at once, and unsaved work there is lost.",
                    "Pair",
                ),
                answered,
            )

        self._form("pair", row, confirm)

    def action_eject(self) -> None:
        row = self.selected_device()
        if row is None:
            return
        name, qube = row.device.name, row.attached_to
        paired = [a.qube for a in self.view.assignments if a.paired and row.device.matches(a.ident)]
        steps = [f"syncs it inside {qube}" if qube else "syncs it"]
        if qube in paired:
            steps.append(f"shuts {qube} down (it is paired with this drive)")
        steps += ["unmounts it", "syncs the host"]
        question = f"Eject {name}? qlite {', '.join(steps)}; then it is safe to pull out."

        def eject() -> str:
            was = qlite_app(self).backend.eject_device(name)
            return f"{name}: synced and detached{f' from {was}' if was else ''}; it is safe to remove"

        def answered(yes: bool | None) -> None:
            if yes:
                self.start_call(f"ejecting {name}", eject)

        self.app.push_screen(ConfirmScreen(question, "Eject"), answered)

    def action_reload(self) -> None:
        self.load()


def _fill(table: DataTable, rows: list[tuple[str, tuple]]) -> None:
    """Replace TABLE's rows, keeping the cursor on the same key."""
    current = None
    if table.row_count:
        current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    keys = [key for key, _ in rows]
    if current in keys:
        table.move_cursor(row=keys.index(current), animate=False)
