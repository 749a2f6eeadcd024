"""The grammar of a policy line's words: services, arguments, qube tokens.

A qube token is parsed once, when its line is read, into one of the frozen
classes below, so that the evaluator matches on kinds rather than on
spellings; a caller's target goes through the same grammar. ``str(token)``
gives back the word exactly as it was written, for audit logs, prompts and
error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeAlias

from qlite.domain.names import NAME_RE
from qlite.errors import PolicySyntaxError

DOM0 = "dom0"
ADMINVM = "@adminvm"
WILDCARD = "*"

# @type:AdminVM is accepted as Qubes accepts it, and matches nothing: the
# host is only ever matched by the tokens that name it.
QUBE_TYPES = frozenset({"AppVM", "TemplateVM", "DispVM", "StandaloneVM", "AdminVM"})

# Qubes' RPCNAME_ALLOWED_CHARSET: letters, digits and "+-._"; a service
# name may not hold '+', which separates it from the argument.
SERVICE_RE = re.compile(r"[A-Za-z0-9._-]+")
ARGUMENT_RE = re.compile(r"[A-Za-z0-9._+-]*")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")

_NAME_HINT = "not a qube name (a letter, then up to 30 letters, digits, '_', '.' or '-')"
_TAG_HINT = "the tag is empty or starts with '@'"


class QubeTraits(Protocol):
    """What a token needs to know about a qube to match it (``QubeFacts`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def klass(self) -> str: ...
    @property
    def tags(self) -> frozenset[str]: ...
    @property
    def template_for_dispvms(self) -> bool: ...


# -- the token kinds ---------------------------------------------------------------


@dataclass(frozen=True)
class QubeName:
    """A qube, by its name."""

    name: str

    def __str__(self) -> str:
        return self.name

    def matches(self, qube: QubeTraits) -> bool:
        return qube.name == self.name


@dataclass(frozen=True)
class Dom0:
    """The host, spelled 'dom0' or '@adminvm'; both mean the same."""

    text: str = DOM0  # kept only so that str() gives back what was written

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class AnyVM:
    """@anyvm: every qube, never the host."""

    def __str__(self) -> str:
        return "@anyvm"

    def matches(self, qube: QubeTraits) -> bool:
        return True


@dataclass(frozen=True)
class Wildcard:
    """'*': every qube; as a source, the host too (the evaluator decides that)."""

    def __str__(self) -> str:
        return WILDCARD

    def matches(self, qube: QubeTraits) -> bool:
        return True


@dataclass(frozen=True)
class Default:
    """@default: the caller named no target."""

    def __str__(self) -> str:
        return "@default"


@dataclass(frozen=True)
class DispVM:
    """@dispvm: a new disposable from the caller's default_dispvm."""

    def __str__(self) -> str:
        return "@dispvm"


@dataclass(frozen=True)
class DispVMName:
    """@dispvm:NAME: a new disposable from the disposable template NAME."""

    PREFIX: ClassVar[str] = "@dispvm:"
    HINT: ClassVar[str] = "@dispvm: must be followed by a qube name or @tag:TAG"
    base: str

    def __str__(self) -> str:
        return self.PREFIX + self.base

    @staticmethod
    def accepts(rest: str) -> bool:
        return NAME_RE.fullmatch(rest) is not None


@dataclass(frozen=True)
class DispVMTag:
    """@dispvm:@tag:T: a new disposable from any disposable template tagged T."""

    PREFIX: ClassVar[str] = "@dispvm:@tag:"
    HINT: ClassVar[str] = _TAG_HINT
    tag: str

    def __str__(self) -> str:
        return self.PREFIX + self.tag

    @staticmethod
    def accepts(rest: str) -> bool:
        return _tag_ok(rest)

    def matches_template(self, template: QubeTraits) -> bool:
        """Whether a disposable made from TEMPLATE is one this token covers."""
        return template.template_for_dispvms and self.tag in template.tags


@dataclass(frozen=True)
class Tag:
    """@tag:T: every qube tagged T."""

    PREFIX: ClassVar[str] = "@tag:"
    HINT: ClassVar[str] = _TAG_HINT
    tag: str

    def __str__(self) -> str:
        return self.PREFIX + self.tag

    @staticmethod
    def accepts(rest: str) -> bool:
        return _tag_ok(rest)

    def matches(self, qube: QubeTraits) -> bool:
        return self.tag in qube.tags


@dataclass(frozen=True)
class QubeType:
    """@type:T: every qube of class T."""

    PREFIX: ClassVar[str] = "@type:"
    HINT: ClassVar[str] = "the type must be one of " + ", ".join(sorted(QUBE_TYPES))
    klass: str

    def __str__(self) -> str:
        return self.PREFIX + self.klass

    @staticmethod
    def accepts(rest: str) -> bool:
        return rest in QUBE_TYPES

    def matches(self, qube: QubeTraits) -> bool:
        return self.klass == qube.klass


Token: TypeAlias = QubeName | Dom0 | AnyVM | Wildcard | Default | DispVM | DispVMName | DispVMTag | Tag | QubeType
SourceToken: TypeAlias = QubeName | Dom0 | AnyVM | Wildcard | DispVMName | DispVMTag | Tag | QubeType
TargetToken: TypeAlias = Token
# What target= and default_target= may name.
Redirect: TypeAlias = QubeName | Dom0 | DispVM | DispVMName
# A caller's target once checked, and a target the evaluator settled on.
CallTarget: TypeAlias = Default | Dom0 | DispVM | DispVMName | QubeName
Concrete: TypeAlias = QubeName | Dom0 | DispVMName

_KEYWORDS: dict[str, Token] = {"@anyvm": AnyVM(), WILDCARD: Wildcard(), "@default": Default(), "@dispvm": DispVM()}
# Longest prefix first: '@dispvm:@tag:' also starts with '@dispvm:'.
_PREFIXED: tuple[type[DispVMTag] | type[DispVMName] | type[Tag] | type[QubeType], ...] = (
    DispVMTag,
    DispVMName,
    Tag,
    QubeType,
)


def _tag_ok(tag: str) -> bool:
    # qlite's tags are any words without whitespace (a split line has none);
    # like Qubes, a tag may not start with '@', so '@tag:@x' is a typo.
    return bool(tag) and not tag.startswith("@")


# -- parsing -----------------------------------------------------------------------


class InvalidToken(PolicySyntaxError):
    """A word that is no qube token. The message says why; ``kind`` is the
    token kind its spelling points at (None for an unknown '@' keyword)."""

    def __init__(self, message: str, kind: type[Token] | None) -> None:
        super().__init__(message)
        self.kind = kind


def parse_word(word: str) -> Token:
    """WORD as the qube token it spells, whatever column it stands in.

    Raises InvalidToken when it spells none.
    """
    if word in (DOM0, ADMINVM):
        return Dom0(word)
    keyword = _KEYWORDS.get(word)
    if keyword is not None:
        return keyword
    for kind in _PREFIXED:
        if word.startswith(kind.PREFIX):
            rest = word[len(kind.PREFIX) :]
            if not kind.accepts(rest):
                raise InvalidToken(kind.HINT, kind)
            return kind(rest)
    if NAME_RE.fullmatch(word):
        return QubeName(word)
    if word.startswith("@"):
        raise InvalidToken("unknown keyword", None)
    raise InvalidToken(_NAME_HINT, QubeName)


def parse_source(word: str) -> SourceToken:
    """WORD as a rule's source column; raise PolicySyntaxError if it cannot be one."""
    token = _column(word, "source")
    if isinstance(token, (Default, DispVM)):
        raise PolicySyntaxError(f"{word!r} cannot be used as a source")
    return token


def parse_target(word: str) -> TargetToken:
    """WORD as a rule's target column; raise PolicySyntaxError if it cannot be one."""
    return _column(word, "target")


def parse_redirect(key: str, word: str) -> Redirect:
    """WORD as the value of KEY= (target or default_target); raise PolicySyntaxError if it cannot be one."""
    try:
        token = parse_word(word)
    except InvalidToken:
        token = None
    if isinstance(token, (QubeName, Dom0, DispVM, DispVMName)):
        return token
    raise PolicySyntaxError(f"{key}= must be a qube name, dom0, @adminvm, @dispvm or @dispvm:NAME, not {word!r}")


def _column(word: str, column: str) -> Token:
    try:
        return parse_word(word)
    except InvalidToken as err:
        raise PolicySyntaxError(f"invalid {column} {word!r}: {err}") from None


def named_qube(token: Token | None) -> str | None:
    """The qube TOKEN names by name (a plain name or @dispvm:NAME), else None."""
    if isinstance(token, QubeName):
        return token.name
    if isinstance(token, DispVMName):
        return token.base
    return None


# -- services and arguments ------------------------------------------------------


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
