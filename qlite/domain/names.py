"""Qube and template name rules (the Contracts' rule, after Qubes)."""

from __future__ import annotations

import re

from qlite.errors import InvalidName

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")
DISP_RE = re.compile(r"^disp[0-9]+$")
RESERVED = frozenset({"none", "default", "dom0"})


def name_problem(name: str) -> str | None:
    """Why NAME is not a valid user-chosen qube name, or None if it is."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return "must start with a letter and hold at most 31 letters, digits, '_', '.' or '-'"
    if name in RESERVED:
        return "is reserved"
    if DISP_RE.fullmatch(name):
        return "is reserved for disposables (dispNNNN)"
    if name.endswith("-dm"):
        return "is reserved (names ending in -dm)"
    return None


def validate_name(name: str, *, allow_disp: bool = False) -> str:
    """Return NAME if valid, else raise InvalidName with a one-line reason."""
    if allow_disp and isinstance(name, str) and DISP_RE.fullmatch(name) and len(name) <= 31:
        return name
    problem = name_problem(name)
    if problem:
        raise InvalidName(f"invalid qube name {name!r}: {problem}")
    return name
