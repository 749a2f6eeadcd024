"""What a command hands back to main(): its outcome as data, which
render.show prints once, for people or as ``--json``. A command builds
one of these and prints nothing itself, so that what it shows can be
tested without capturing a terminal, and so that the two forms cannot
drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """An outcome with nothing of its own on stdout.

    DATA is what ``--json`` prints; a dataclass in it is printed as its
    fields. None prints nothing under --json (no command prints a bare
    null). NOTE says what was done: lines for people on stderr, before the
    output, in either form. FOOTNOTE follows the human form on stderr and
    is left out of --json. EXIT_CODE is the process's."""

    data: Any = field(default=None, kw_only=True)
    note: str = field(default="", kw_only=True)
    footnote: str = field(default="", kw_only=True)
    exit_code: int = field(default=0, kw_only=True)


@dataclass
class Table(Result):
    """ROWS under COLUMNS; COLOURS[i] is the label colour of row i's first cell."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    colours: Sequence[str | None] | None = None


@dataclass
class Record(Result):
    """Key/value detail, one pair a line."""

    values: dict[str, Any]


@dataclass
class Message(Result):
    """One line; an empty value is still a line (a script reads it as "")."""

    text: str


@dataclass
class Lines(Result):
    """Lines of text; none prints nothing."""

    lines: list[str]


@dataclass
class Markup(Result):
    """Lines in rich's markup; whoever builds them escapes what came from
    elsewhere."""

    lines: list[str]


@dataclass
class Raw(Result):
    """Text that is itself the output (an exported key): written as it is,
    with or without --json."""

    text: str


# -- the JSON of single commands ---------------------------------------------------


@dataclass
class PolicyAnswer:
    """``qlite policy eval``: what the policy answers to one call."""

    action: str
    target: str | None
    choices: list[str]
    user: str | None
    rule: str | None  # FILE:LINE of the rule that decided
    reason: str


@dataclass
class TemplateRevision:
    """``qlite template build``: the revision that is current now."""

    name: str
    revision: int
    image_id: str
    origin: str


@dataclass
class TemplateUpdate(TemplateRevision):
    updated: bool  # false when there was nothing to upgrade: no new revision


@dataclass
class TemplateReverted:
    name: str
    revision: int
    image_id: str


@dataclass
class TemplateApproved:
    name: str
    image_id: str


@dataclass
class TemplateRemoved:
    name: str
    removed: bool = True
