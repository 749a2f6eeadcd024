"""The grammar of a policy line's words: services, arguments, qube tokens.

Pure functions over strings. The parser asks them whether a word is valid
where it was written; the evaluator relies on every rule having passed.
"""

from __future__ import annotations

import re

from qlite.core.names import NAME_RE

DOM0 = "dom0"
ADMINVM = "@adminvm"
ANYVM = "@anyvm"
WILDCARD = "*"
DEFAULT = "@default"
DISPVM = "@dispvm"
DISPVM_PREFIX = "@dispvm:"
DISPVM_TAG_PREFIX = "@dispvm:@tag:"
TAG_PREFIX = "@tag:"
TYPE_PREFIX = "@type:"

# @type:AdminVM is accepted as Qubes accepts it, and matches nothing: the
# host is only ever matched by the tokens that name it.
QUBE_TYPES = frozenset({"AppVM", "TemplateVM", "DispVM", "StandaloneVM", "AdminVM"})

# Qubes' RPCNAME_ALLOWED_CHARSET: letters, digits and "+-._"; a service
# name may not hold '+', which separates it from the argument.
SERVICE_RE = re.compile(r"[A-Za-z0-9._-]+")
ARGUMENT_RE = re.compile(r"[A-Za-z0-9._+-]*")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")

# Where a token may appear, by its kind.
_SOURCE_KINDS = frozenset({"name", "dom0", "anyvm", "wildcard", "dispvm-name", "dispvm-tag", "tag", "type"})
_TARGET_KINDS = _SOURCE_KINDS | {"default", "dispvm"}
_REDIRECT_KINDS = frozenset({"name", "dom0", "dispvm", "dispvm-name"})


def is_dom0(token: str) -> bool:
    return token in (DOM0, ADMINVM)


def token_kind(token: str) -> str | None:
    """The kind of a qube token, or None when it is not a token at all."""
    if is_dom0(token):
        return "dom0"
    exact = {ANYVM: "anyvm", WILDCARD: "wildcard", DEFAULT: "default", DISPVM: "dispvm"}
    if token in exact:
        return exact[token]
    if token.startswith(DISPVM_TAG_PREFIX):
        return "dispvm-tag" if _tag_ok(token[len(DISPVM_TAG_PREFIX):]) else None
    if token.startswith(DISPVM_PREFIX):
        return "dispvm-name" if NAME_RE.fullmatch(token[len(DISPVM_PREFIX):]) else None
    if token.startswith(TAG_PREFIX):
        return "tag" if _tag_ok(token[len(TAG_PREFIX):]) else None
    if token.startswith(TYPE_PREFIX):
        return "type" if token[len(TYPE_PREFIX):] in QUBE_TYPES else None
    if NAME_RE.fullmatch(token):
        return "name"
    return None


def named_qube(token: str) -> str | None:
    """The qube TOKEN names by name (a plain name or @dispvm:NAME), else None."""
    kind = token_kind(token)
    if kind == "name":
        return token
    if kind == "dispvm-name":
        return token[len(DISPVM_PREFIX):]
    return None


def _tag_ok(tag: str) -> bool:
    # qlite's tags are any words without whitespace (a split line has none);
    # like Qubes, a tag may not start with '@', so '@tag:@x' is a typo.
    return bool(tag) and not tag.startswith("@")


def source_problem(token: str) -> str | None:
    """Why TOKEN cannot be a source column, or None."""
    return _column_problem(token, "source", _SOURCE_KINDS)


def target_problem(token: str) -> str | None:
    """Why TOKEN cannot be a target column, or None."""
    return _column_problem(token, "target", _TARGET_KINDS)


def redirect_problem(key: str, token: str) -> str | None:
    """Why TOKEN cannot be the value of target= or default_target=, or None."""
    if token_kind(token) in _REDIRECT_KINDS:
        return None
    return f"{key}= must be a qube name, dom0, @adminvm, @dispvm or @dispvm:NAME, not {token!r}"


def _column_problem(token: str, column: str, allowed: frozenset[str]) -> str | None:
    kind = token_kind(token)
    if kind is None:
        return f"invalid {column} {token!r}: {_token_hint(token)}"
    if kind not in allowed:
        return f"{token!r} cannot be used as a {column}"
    return None


def _token_hint(token: str) -> str:
    if token.startswith(TYPE_PREFIX):
        return "the type must be one of " + ", ".join(sorted(QUBE_TYPES))
    if token.startswith((TAG_PREFIX, DISPVM_TAG_PREFIX)):
        return "the tag is empty or starts with '@'"
    if token.startswith(DISPVM_PREFIX):
        return "@dispvm: must be followed by a qube name or @tag:TAG"
    if token.startswith("@"):
        return "unknown keyword"
    return "not a qube name (a letter, then up to 30 letters, digits, '_', '.' or '-')"


def service_problem(service: str) -> str | None:
    if service == WILDCARD or SERVICE_RE.fullmatch(service):
        return None
    return f"invalid service name {service!r} (letters, digits, '.', '_' and '-' only, or '*')"


def argument_problem(service: str, argument: str) -> str | None:
    """Why ARGUMENT (as written: '*', '+' or '+ARG') is invalid for SERVICE."""
    if argument == WILDCARD:
        return None
    if not argument.startswith("+"):
        return f"the argument must be '*' or start with '+', not {argument!r}"
    if not ARGUMENT_RE.fullmatch(argument[1:]):
        return f"invalid argument {argument!r} (letters, digits, '.', '_', '-' and '+' only)"
    if service == WILDCARD:
        return "a '*' service takes only a '*' argument"
    return None
