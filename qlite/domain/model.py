"""Qubes, templates and their properties, as plain dataclasses.

Property names follow Qubes (qvm-prefs). Values reach the store as text and
are parsed by pure functions here, so the CLI, the TUI and the daemon agree
on what a valid value is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Literal, get_args
from uuid import uuid4

from qlite.domain.labels import validate_label
from qlite.errors import InvalidValue

Klass = Literal["AppVM", "TemplateVM", "DispVM", "StandaloneVM"]
Mode = Literal["container", "vm"]  # only the runtimes (qlite.core.runtimes) act on it
CLASSES: tuple[Klass, ...] = get_args(Klass)
MODES: tuple[Mode, ...] = get_args(Mode)
STATES = ("Running", "Halted", "Paused", "Transient")

DEFAULT_MEMORY_MIB = 400
DEFAULT_VCPUS = 2
DEFAULT_PIDS_LIMIT = 4096
# The built-in uplink: the host routes the qube's traffic through podman's
# NAT bridge. Gateway qubes (provides_network) can sit in between.
HOST_UPLINK = "dom0"


class State(str, Enum):
    RUNNING = "Running"
    HALTED = "Halted"
    PAUSED = "Paused"
    TRANSIENT = "Transient"


@dataclass
class Qube:
    """A qube as the store records it. ``netvm_raw`` and ``default_dispvm_raw``
    keep the distinction between "follow the global default" (None) and an
    explicit value ('' meaning none)."""

    name: str
    klass: Klass
    label: str
    template: str | None
    netvm_raw: str | None = None
    provides_network: bool = False
    memory: int = DEFAULT_MEMORY_MIB
    maxmem: int = 0
    vcpus: int = DEFAULT_VCPUS
    autostart: bool = False
    default_dispvm_raw: str | None = None
    template_for_dispvms: bool = False
    default_user: str = "user"
    include_in_backups: bool = True
    mode: Mode = "container"
    owner: str | None = None
    # The process creating, cloning or removing the qube, until it is done.
    pending: str | None = None
    created_at: float = 0.0
    tags: set[str] = field(default_factory=set)
    # The qube's identity: a new one for every qube made, a clone included.
    uuid: str = field(default_factory=lambda: str(uuid4()))

    @property
    def is_disposable(self) -> bool:
        return self.klass == "DispVM"

    def derive(self, **changes: object) -> Qube:
        """A new qube made from this one (a clone, a disposable): its
        settings with CHANGES, and an identity of its own."""
        # CHANGES are fields of any type, by name: mypy cannot match them to their fields.
        return replace(self, **{"tags": set(self.tags), **changes, "uuid": str(uuid4())})  # type: ignore[arg-type]


@dataclass
class TemplateRevision:
    rev: int
    image_id: str
    origin: str  # build | update | adopted
    created_at: float


@dataclass
class Template:
    name: str
    current_rev: int | None
    revisions: list[TemplateRevision] = field(default_factory=list)

    @property
    def current(self) -> TemplateRevision | None:
        for r in self.revisions:
            if r.rev == self.current_rev:
                return r
        return None


# --------------------------------------------------------------------------
# Property parsing: pure.

TRUE = frozenset({"1", "true", "on", "yes", "y"})
FALSE = frozenset({"0", "false", "off", "no", "n", ""})


def parse_bool(prop: str, text: str) -> bool:
    low = text.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise InvalidValue(f"{prop}: expected true or false, got {text!r}")


def parse_int(prop: str, text: str, minimum: int = 0, maximum: int = 1 << 40) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InvalidValue(f"{prop}: expected a whole number, got {text!r}") from None
    if not minimum <= value <= maximum:
        raise InvalidValue(f"{prop}: {value} is out of range ({minimum}..{maximum})")
    return value


def parse_choice(prop: str, text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise InvalidValue(f"{prop}: expected one of {', '.join(choices)}, got {text!r}")
    return text


def parse_mode(text: str) -> Mode:
    for mode in MODES:
        if text == mode:
            return mode
    raise InvalidValue(f"mode: expected one of {', '.join(MODES)}, got {text!r}")


# Qube properties: name -> (db column, kind). Kind drives parsing and display.
PROPERTIES: dict[str, tuple[str, str]] = {
    "label": ("label", "label"),
    "template": ("template", "qube-ref"),
    "netvm": ("netvm", "netvm"),
    "provides_network": ("provides_network", "bool"),
    "memory": ("memory", "mib"),
    "maxmem": ("maxmem", "mib0"),
    "vcpus": ("vcpus", "vcpus"),
    "autostart": ("autostart", "bool"),
    "default_dispvm": ("default_dispvm", "dispvm"),
    "template_for_dispvms": ("template_for_dispvms", "bool"),
    "default_user": ("default_user", "user"),
    "include_in_backups": ("include_in_backups", "bool"),
    "mode": ("mode", "mode"),
}
READ_ONLY = ("name", "class", "uuid", "ip")
ALL_PROPERTIES = (*READ_ONLY, *PROPERTIES)


def parse_property(prop: str, text: str) -> object:
    """Parse TEXT as a value of qube property PROP (references are checked
    against the system by the manager, not here)."""
    if prop in READ_ONLY:
        raise InvalidValue(f"property {prop!r} is read-only")
    if prop not in PROPERTIES:
        raise InvalidValue(f"no such property {prop!r}; known: {', '.join(ALL_PROPERTIES)}")
    kind = PROPERTIES[prop][1]
    if kind == "label":
        return validate_label(text)
    if kind == "bool":
        return parse_bool(prop, text)
    if kind == "mib":
        return parse_int(prop, text, 32, 1 << 22)
    if kind == "mib0":
        return parse_int(prop, text, 0, 1 << 22)
    if kind == "vcpus":
        return parse_int(prop, text, 1, 256)
    if kind == "mode":
        return parse_choice(prop, text, MODES)
    if kind == "user":
        if text not in ("user", "root"):
            raise InvalidValue(f"{prop}: expected user or root, got {text!r}")
        return text
    if kind in ("netvm", "dispvm"):
        return "" if text in ("", "none") else text
    return text


# Properties a running qube takes up only at its next start. Nothing else
# needs a restart: label, autostart, default_dispvm, default_user,
# template_for_dispvms and include_in_backups act on what qlite does next,
# and mode can change only while the qube is halted.
RESOURCE_PROPERTIES = ("memory", "maxmem", "vcpus")
NEXT_START_PROPERTIES = ("netvm", "provides_network", "template", *RESOURCE_PROPERTIES)


def next_start_note(name: str, prop: str, resources_fixed_because: str) -> str | None:
    """What to tell the user who sets PROP on running qube NAME, or None
    when the change takes effect at once (the reason memory and vCPUs are
    fixed while it runs is its runtime's). Pure."""
    if prop not in NEXT_START_PROPERTIES:
        return None
    note = f"{name} is running: its new {prop} takes effect at its next start"
    if prop in RESOURCE_PROPERTIES:
        note += f" ({resources_fixed_because})"
    return note


def parse_memory_limit(qube: Qube) -> int:
    """The container memory limit in MiB: maxmem when set, else memory."""
    return qube.maxmem or qube.memory


def json_value(prop: str, text: str) -> object:
    """A property's shown TEXT as JSON gives it, with ``qlite ls --json``'s
    types: booleans, numbers, and null for no netvm, dispvm, template or ip."""
    kind = PROPERTIES[prop][1] if prop in PROPERTIES else "text"
    if kind == "bool":
        return text == "True"
    if kind in ("mib", "mib0", "vcpus"):
        return int(text)
    if kind in ("netvm", "dispvm", "qube-ref") or prop == "ip":
        return text or None
    return text


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return ""
    return str(value)
