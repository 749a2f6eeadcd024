"""Forms that make a qube: create (name, label, template, netvm, mode,
memory, vCPUs, provides_network) and clone. Each runs its core call itself, so a rejected value keeps the
form open with the one-line reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from qlite.domain.labels import LABELS, label_colour
from qlite.domain.model import DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, HOST_UPLINK
from qlite.errors import InvalidValue, QliteError
from qlite.tui.backend import Snapshot
from qlite.tui.messages import QubeCreated
from qlite.tui.screens.base import qlite_app
from qlite.tui.widgets.error_line import ErrorLine
from qlite.tui.widgets.state_checkbox import StateCheckbox

NETVM_DEFAULT = "default"
NETVM_NONE = "none"


@dataclass(frozen=True)
class NewQube:
    name: str
    label: str
    template: str | None
    netvm: str | None
    memory: int
    vcpus: int
    mode: str
    provides_network: bool


class _QubeForm(ModalScreen[str | None]):
    """A form whose submit runs one core call in a worker: on success it
    returns the new qube's name, on a QliteError it stays open with the
    one-line reason. SUBMIT is the id of its submit button."""

    SUBMIT = ""

    @work(thread=True, exclusive=True)
    def _make(self, name: str, call: Callable[[], object]) -> None:
        try:
            call()
        except QliteError as exc:
            self.post_message(QubeCreated(name, str(exc)))
            return
        self.post_message(QubeCreated(name))

    def on_qube_created(self, message: QubeCreated) -> None:
        self.query_one(f"#{self.SUBMIT}", Button).disabled = False
        if message.error:
            self.query_one("#error", ErrorLine).show(message.error)
            return
        self.dismiss(message.name)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class CreateQubeScreen(_QubeForm):
    """Returns the new qube's name, or None if cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "submit", "Create")]
    SUBMIT = "create"

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def compose(self) -> ComposeResult:
        snap = self.snapshot
        templates = snap.templates
        default_template = snap.default_template if snap.default_template in templates else None
        netvms = [
            (f"default ({snap.default_netvm or 'none'})", NETVM_DEFAULT),
            ("none", NETVM_NONE),
            (f"{HOST_UPLINK} (the host's uplink)", HOST_UPLINK),
        ]
        netvms += [(name, name) for name in snap.gateways]
        # Compact fields (no borders): the whole form fits an 80x24 terminal.
        with Vertical(classes="dialog form compact-form"):
            yield Label("New qube", classes="dialog-title")
            with Horizontal(classes="field"):
                yield Label("Name")
                yield Input(placeholder="e.g. work", id="name", compact=True)
            with Horizontal(classes="field"):
                yield Label("Label")
                yield Select(
                    [(Text(name, style=f"bold {label_colour(name)}"), name) for name in LABELS],
                    value="red",
                    allow_blank=False,
                    id="label",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Label("Template")
                yield Select(
                    [(t, t) for t in templates],
                    value=default_template or Select.NULL,
                    prompt="(choose a template)",
                    id="template",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Label("NetVM")
                yield Select(netvms, value=NETVM_DEFAULT, allow_blank=False, id="netvm", compact=True)
            with Horizontal(classes="field"):
                yield Label("Mode")
                yield Select(
                    [("container (gVisor)", "container"), ("VM (QEMU)", "vm")],
                    value="container",
                    allow_blank=False,
                    id="mode",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Label("Memory (MiB)")
                yield Input(str(DEFAULT_MEMORY_MIB), id="memory", restrict=r"[0-9]*", compact=True)
                yield Label("vCPUs", classes="second")
                yield Input(str(DEFAULT_VCPUS), id="vcpus", restrict=r"[0-9]*", compact=True)
            yield StateCheckbox("provides network (a gateway for other qubes)", id="provides_network")
            yield ErrorLine(id="error")
            with Horizontal(classes="buttons"):
                yield Button("Create", variant="primary", id="create")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()

    @on(Button.Pressed, "#create")
    @on(Input.Submitted)
    def action_submit(self) -> None:
        errors = self.query_one("#error", ErrorLine)
        try:
            request = self._request()
        except QliteError as exc:
            errors.show(str(exc))
            return
        errors.show("")
        self.query_one("#create", Button).disabled = True
        self._create(request)

    def _request(self) -> NewQube:
        name = self.query_one("#name", Input).value.strip()
        if not name:
            raise InvalidValue("give the qube a name")
        template = self.query_one("#template", Select).value
        memory_text = self.query_one("#memory", Input).value.strip()
        if not memory_text:
            raise InvalidValue("memory: give a size in MiB")
        vcpus_text = self.query_one("#vcpus", Input).value.strip()
        if not vcpus_text:
            raise InvalidValue("vcpus: give a number of virtual CPUs")
        return NewQube(
            name,
            str(self.query_one("#label", Select).value),
            None if template is Select.NULL else str(template),
            str(self.query_one("#netvm", Select).value),
            int(memory_text),
            int(vcpus_text),
            str(self.query_one("#mode", Select).value),
            self.query_one("#provides_network", StateCheckbox).value,
        )

    def _create(self, q: NewQube) -> None:
        self._make(
            q.name,
            lambda: qlite_app(self).backend.create(
                q.name,
                label=q.label,
                template=q.template,
                netvm=q.netvm,
                memory=q.memory,
                vcpus=q.vcpus,
                mode=q.mode,
                provides_network=q.provides_network,
            ),
        )


class CloneScreen(_QubeForm):
    """Clone SOURCE under a new name; returns it, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    SUBMIT = "clone"

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog form"):
            yield Label(f"Clone {self.source}", classes="dialog-title")
            with Horizontal(classes="field"):
                yield Label("New name")
                yield Input(value=f"{self.source}-clone", id="name")
            yield ErrorLine(id="error")
            with Horizontal(classes="buttons"):
                yield Button("Clone", variant="primary", id="clone")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#clone")
    @on(Input.Submitted)
    def submit(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        self.query_one("#clone", Button).disabled = True
        self._clone(name)

    def _clone(self, name: str) -> None:
        self._make(name, lambda: qlite_app(self).backend.clone(self.source, name))
