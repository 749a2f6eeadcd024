"""The device forms: attach a device to a running qube, assign it to a
qube (attached at each start), or pair it with one. They only gather the
choice; the devices screen makes the core call and shows its errors."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from qlite.devices.manager import DeviceRow
from qlite.domain.labels import label_colour
from qlite.tui.backend import QubeChoice
from qlite.tui.widgets.error_line import ErrorLine
from qlite.tui.widgets.state_checkbox import StateCheckbox

KINDS = ("attach", "assign", "pair")


@dataclass(frozen=True)
class DeviceRequest:
    qube: str
    ident: str
    read_only: bool
    required: bool = False


def pair_idents(row: DeviceRow) -> list[str]:
    """The identities a drive can be paired by: only those that survive
    re-insertion (a kernel name does not)."""
    dev = row.device
    return [
        i for i in (f"uuid:{dev.fs_uuid}" if dev.fs_uuid else "", f"serial:{dev.serial}" if dev.serial else "") if i
    ]


def qube_option(q: QubeChoice) -> tuple[Text, str]:
    text = Text(q.name, style=f"bold {label_colour(q.label)}")
    text.append(f"  {q.label}" + (", VM" if q.mode == "vm" else "") + ("" if q.running else ", halted"), style="dim")
    return text, q.name


class DeviceFormScreen(ModalScreen[DeviceRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, kind: str, row: DeviceRow, qubes: list[QubeChoice]) -> None:
        super().__init__()
        assert kind in KINDS
        self.kind = kind
        self.row = row
        self.qubes = qubes

    def _explanation(self) -> str:
        name = self.row.device.name
        if self.kind == "attach":
            return (
                f"A container qube gets its filesystem at /mnt/removable/{name} (nodev, nosuid, noexec); "
                "a VM qube gets the block device."
            )
        if self.kind == "assign":
            return "Attached at every start of the qube while it is present; required: the qube starts only with it."
        return (
            "The qube then runs only while this drive is in: inserting it starts the qube (fresh), "
            "pulling it out stops the qube at once."
        )

    def compose(self) -> ComposeResult:
        name = self.row.device.name
        title = {
            "attach": f"Attach {name} to a running qube",
            "assign": f"Assign {name} to a qube",
            "pair": f"Pair {name} with a qube",
        }[self.kind]
        with Vertical(classes="dialog form"):
            yield Label(title, classes="dialog-title")
            yield Static(self._explanation(), classes="dialog-note", markup=False)
            with Horizontal(classes="field"):
                yield Label("Qube")
                yield Select([qube_option(q) for q in self.qubes], prompt="(choose a qube)", id="qube")
            if self.kind == "assign":
                with Horizontal(classes="field"):
                    yield Label("Identity")
                    yield Input(self.row.device.ident, id="ident")
            elif self.kind == "pair":
                idents = pair_idents(self.row)
                with Horizontal(classes="field"):
                    yield Label("Identity")
                    yield Select([(i, i) for i in idents], value=idents[0], allow_blank=False, id="ident")
            yield StateCheckbox("read-only", id="read-only")
            if self.kind == "assign":
                yield StateCheckbox("required (the qube does not start without it)", id="required")
            yield ErrorLine(id="error")
            with Horizontal(classes="buttons"):
                yield Button(self.kind.capitalize(), variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#qube", Select).focus()

    @on(Button.Pressed, "#submit")
    @on(Input.Submitted)
    def submit(self) -> None:
        qube = self.query_one("#qube", Select).value
        if qube is Select.NULL:
            self.query_one("#error", ErrorLine).show("choose a qube")
            return
        ident = self.row.device.name
        if self.kind == "assign":
            ident = self.query_one("#ident", Input).value.strip()
        elif self.kind == "pair":
            ident = str(self.query_one("#ident", Select).value)
        required = self.kind == "assign" and self.query_one("#required", StateCheckbox).value
        self.dismiss(DeviceRequest(str(qube), ident, self.query_one("#read-only", StateCheckbox).value, required))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
