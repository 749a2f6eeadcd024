"""Name rules shared by the guest tools: what may cross a qube boundary.

Pure functions; each returns a one-line problem or None.
"""

from __future__ import annotations

# No re here: the dispatcher imports this module on every RPC call, and re
# (with enum and functools under it) is a good part of a Python start in a qube.
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# The broker's own limits (qlite/rpc/broker.py) are the same, after Qubes:
# SERVICE is [A-Za-z0-9._-]{1,64}, ARGUMENT [A-Za-z0-9._+-]{0,256}.
SERVICE_CHARS = frozenset(_ALNUM + "._-")
SERVICE_MAX = 64
ARGUMENT_CHARS = frozenset(_ALNUM + "._+-")
ARGUMENT_MAX = 256
# Qube names: the qlite rule (qlite/domain/names.py), which disposables and
# dom0 also satisfy: [A-Za-z][A-Za-z0-9_.-]{0,30}.
QUBE_FIRST_CHARS = frozenset(_ALNUM[:52])
QUBE_CHARS = frozenset(_ALNUM + "_.-")
QUBE_MAX = 31

NAME_MAX = 255     # bytes in one path component
PATH_MAX = 4096    # bytes in a relative path inside a copied tree
# Control characters, format characters (bidi overrides, zero-width marks),
# lone surrogates (which would smuggle in non-UTF-8 bytes) and line breaks.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def service_problem(service: str) -> str | None:
    if not (0 < len(service) <= SERVICE_MAX and SERVICE_CHARS.issuperset(service)) or service in (".", ".."):
        return f"invalid service name {service!r}: use at most 64 of A-Z a-z 0-9 . _ -"
    return None


def argument_problem(argument: str) -> str | None:
    if not (len(argument) <= ARGUMENT_MAX and ARGUMENT_CHARS.issuperset(argument)):
        return f"invalid service argument {argument!r}: use at most 256 of A-Z a-z 0-9 . _ + -"
    return None


def qube_problem(name: str) -> str | None:
    if not (0 < len(name) <= QUBE_MAX and name[0] in QUBE_FIRST_CHARS and QUBE_CHARS.issuperset(name)):
        return f"invalid qube name {name!r}"
    return None


def component_problem(part: str) -> str | None:
    """Why PART cannot be one component of a received path, or None."""
    if part in ("", ".", ".."):
        return f"{part!r} is not allowed as a file name"
    if "/" in part or "\0" in part:
        return f"{part!r}: '/' and NUL are not allowed in a file name"
    import unicodedata  # noqa: PLC0415 (only the file tools need it)

    for ch in part:
        if unicodedata.category(ch) in UNSAFE_CATEGORIES:
            return f"{part!r}: unsafe character U+{ord(ch):04X} in a file name"
    if len(part.encode("utf-8")) > NAME_MAX:
        return f"{part[:40]!r}...: a file name is longer than {NAME_MAX} bytes"
    return None


def relpath_problem(name: object) -> str | None:
    """Why NAME cannot be a relative path inside a copied tree, or None."""
    if not isinstance(name, str) or not name:
        return "empty file name"
    if name.startswith("/"):
        return f"{name[:80]!r}: absolute paths are not allowed"
    for part in name.split("/"):
        problem = component_problem(part)
        if problem:
            return problem
    if len(name.encode("utf-8")) > PATH_MAX:
        return f"{name[:40]!r}...: a path is longer than {PATH_MAX} bytes"
    return None


def printable(text: str, limit: int = 200) -> str:
    """TEXT (from another qube) made safe to print on a terminal."""
    import unicodedata  # noqa: PLC0415 (only messages need it)

    out = "".join(ch if unicodedata.category(ch) not in UNSAFE_CATEGORIES or ch == "\t" else "?" for ch in text)
    return out if len(out) <= limit else out[:limit] + "..."
