"""The qrexec policy parser (Qubes 4.1+ format) and the policy loader.

A policy is a list of rules, read from the shipped and the admin directory
in C-locale file-name order; the first rule matching a call decides it.
Anything wrong with any file makes the whole policy broken, and a broken
policy denies every call (``Policy.error``).

Only ``files.read_policy_path`` touches the disk. ``parse_policy`` is pure
given its ``include_loader``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

from qlite.errors import PolicySyntaxError, QliteError
from qlite.rpc.policy import tokens
from qlite.rpc.policy.files import c_locale_sorted, read_policy_path, valid_file_name

IncludeLoader = Callable[[str], tuple[str, str]]

Action = Literal["allow", "deny", "ask"]
ACTIONS: tuple[Action, ...] = get_args(Action)
# Which parameters each action takes, after qrexec's Allow/Deny/Ask.
PARAMS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "allow": frozenset({"target", "user", "notify", "autostart"}),
        "deny": frozenset({"notify"}),
        "ask": frozenset({"target", "default_target", "user", "notify", "autostart"}),
    }
)
ALL_PARAMS = frozenset().union(*PARAMS.values())
YES_NO = ("yes", "no")
MAX_INCLUDE_DEPTH = 16


def _one_line(text: str) -> str:
    """TEXT with control characters escaped, so a message stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Rule:
    """One policy line, as written, with where it was written."""

    service: str  # "*" or a service name
    argument: str | None  # None: any ("*"); "": empty ("+"); "x": "+x"
    source: tokens.SourceToken  # str() gives it back as written
    target: tokens.TargetToken
    action: Action
    params: Mapping[str, str] = field(hash=False)  # as written, read-only
    file: str
    line: int
    # target= and default_target= as tokens; they follow from params.
    redirect: tokens.Redirect | None = field(init=False, compare=False, repr=False)
    default_redirect: tokens.Redirect | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        params = MappingProxyType(dict(self.params))
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "redirect", _redirect(params, "target"))
        object.__setattr__(self, "default_redirect", _redirect(params, "default_target"))

    @property
    def location(self) -> str:
        """The rule's "file:line", fit for a one-line message."""
        return _one_line(f"{self.file}:{self.line}")


def _redirect(params: Mapping[str, str], key: str) -> tokens.Redirect | None:
    value = params.get(key)
    return None if value is None else tokens.parse_redirect(key, value)


@dataclass(frozen=True)
class Policy:
    """A loaded policy. When ``error`` is set the rules are empty and every call is denied."""

    rules: tuple[Rule, ...]
    error: str | None = None  # "file:line: message"


class _LineError(Exception):
    """A problem with the line being parsed; the parser adds file:line."""


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _resolve(path: str, including_file: str) -> str:
    """An include's path: relative paths are relative to the including file's directory."""
    if not posixpath.isabs(path):
        path = posixpath.join(posixpath.dirname(including_file), path)
    return posixpath.normpath(path)


class _Parser:
    """Parses files into ``rules``.

    With ``errors`` None the first error raises PolicySyntaxError; with a
    list, errors are appended and parsing goes on with the next line.
    """

    def __init__(self, loader: IncludeLoader | None, errors: list[str] | None) -> None:
        self.loader = loader
        self.errors = errors
        self.rules: list[Rule] = []

    def fail(self, file: str, line: int, message: str) -> None:
        text = _one_line(f"{file}:{line}: {message}")
        if self.errors is None:
            raise PolicySyntaxError(text)
        self.errors.append(text)

    def parse(
        self, text: str, filename: str, stack: tuple[str, ...], scope: tuple[str, str | None] | None = None
    ) -> None:
        """Parse TEXT. SCOPE is (service, argument) for a !include-service file (4.0 format)."""
        # Only '\n' ends a line, so line numbers are the ones an editor shows.
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if scope is not None:
                line = _compat40(line)
            try:
                if line.startswith("!"):
                    self._directive(line, filename, lineno, stack, scope)
                else:
                    self.rules.append(_rule(line, filename, lineno, scope))
            except _LineError as err:
                self.fail(filename, lineno, str(err))

    def _directive(
        self, line: str, filename: str, lineno: int, stack: tuple[str, ...], scope: tuple[str, str | None] | None
    ) -> None:
        directive, *args = line.split()
        if scope is not None:
            if directive != "!include":
                raise _LineError(f"only !include may appear in a !include-service file, not {directive!r}")
            self._include(_one_arg(directive, args), filename, stack, scope)
        elif directive == "!include":
            self._include(_one_arg(directive, args), filename, stack, None)
        elif directive == "!include-dir":
            self._include_dir(_one_arg(directive, args), filename, lineno, stack)
        elif directive == "!include-service":
            if len(args) != 3:
                raise _LineError("!include-service takes SERVICE ARGUMENT FILE")
            service, argument, path = args
            problem = tokens.service_problem(service) or tokens.argument_problem(service, argument)
            if problem:
                raise _LineError(problem)
            self._include(path, filename, stack, (service, _argument_value(argument)))
        elif directive == "!compat-4.0":
            raise _LineError("!compat-4.0 is not supported: qlite has no Qubes 4.0 policy to read")
        else:
            raise _LineError(f"unknown directive {directive!r} (expected !include, !include-dir or !include-service)")

    def _load(self, path: str) -> tuple[str, str]:
        if self.loader is None:
            raise _LineError("includes are not available when parsing a lone text")
        try:
            return self.loader(path)
        except (OSError, ValueError, QliteError) as err:
            raise _LineError(f"cannot read {path}: {_why(err)}") from None

    def _include(self, path: str, filename: str, stack: tuple[str, ...], scope: tuple[str, str | None] | None) -> None:
        if len(stack) > MAX_INCLUDE_DEPTH:
            raise _LineError(f"includes nest deeper than {MAX_INCLUDE_DEPTH} files")
        text, resolved = self._load(_resolve(path, filename))
        if resolved in stack:
            loop = " -> ".join((*stack[stack.index(resolved) :], resolved))
            raise _LineError(f"include loop: {loop}")
        self.parse(text, resolved, (*stack, resolved), scope)

    def _include_dir(self, path: str, filename: str, lineno: int, stack: tuple[str, ...]) -> None:
        listing, directory = self._load(_resolve(path, filename).rstrip("/") + "/")
        names = c_locale_sorted(name for name in listing.split("\n") if name)
        for name in names:
            if not valid_file_name(name):
                self.fail(filename, lineno, f"invalid policy file name {name!r} in {path}: {_NAME_RULE}")
        for name in (n for n in names if valid_file_name(n)):
            try:
                self._include(posixpath.join(directory, name), filename, stack, None)
            except _LineError as err:
                self.fail(filename, lineno, str(err))


_NAME_RULE = "use only 0-9, a-z, '_', '.' and '-', ending in .policy"


def _one_arg(directive: str, args: list[str]) -> str:
    if len(args) != 1:
        raise _LineError(f"{directive} takes exactly one path")
    return args[0]


def _compat40(line: str) -> str:
    # The 4.0 format: '$' spelled '@', commas separated the parameters,
    # and '$include:PATH' included another file of the same format.
    return line.replace("$include:", "!include ").replace("$", "@").replace(",", " ")


def _argument_value(argument: str) -> str | None:
    return None if argument == tokens.WILDCARD else argument[1:]


def _rule(line: str, filename: str, lineno: int, scope: tuple[str, str | None] | None) -> Rule:
    words = line.split()
    if scope is None:
        if len(words) < 5:
            raise _LineError(
                f"expected SERVICE +ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...], got {len(words)} words"
            )
        service, argument, source, target, action, *params = words
        problem = tokens.service_problem(service) or tokens.argument_problem(service, argument)
        if problem:
            raise _LineError(problem)
        argument_value = _argument_value(argument)
    else:
        if len(words) < 3:
            raise _LineError(f"expected SOURCE TARGET ACTION [PARAM=VALUE ...], got {len(words)} words")
        source, target, action, *params = words
        service, argument_value = scope
    try:
        source_token = tokens.parse_source(source)
        target_token = tokens.parse_target(target)
    except PolicySyntaxError as err:
        raise _LineError(str(err)) from None
    verb = _action(action)
    values = _params(verb, params)
    if verb == "allow" and isinstance(target_token, tokens.Default) and "target" not in values:
        raise _LineError("allow to @default needs target= (the caller named no target)")
    return Rule(service, argument_value, source_token, target_token, verb, values, filename, lineno)


def _action(word: str) -> Action:
    for action in ACTIONS:
        if word == action:
            return action
    raise _LineError(f"invalid action {word!r} (expected allow, deny or ask)")


def _params(action: Action, params: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep:
            raise _LineError(f"parameter {param!r} is not KEY=VALUE (inline comments are not allowed)")
        if key not in ALL_PARAMS:
            raise _LineError(f"unknown parameter {key!r}")
        if key not in PARAMS[action]:
            allowed = ", ".join(f"{p}=" for p in sorted(PARAMS[action]))
            raise _LineError(f"{action} does not take {key}= (it takes {allowed})")
        if key in values:
            raise _LineError(f"parameter {key!r} given twice")
        problem = _param_problem(key, value)
        if problem:
            raise _LineError(problem)
        values[key] = value
    return values


def _param_problem(key: str, value: str) -> str | None:
    if key in ("notify", "autostart"):
        return None if value in YES_NO else f"{key}= must be yes or no, not {value!r}"
    if key in ("target", "default_target"):
        try:
            tokens.parse_redirect(key, value)
        except PolicySyntaxError as err:
            return str(err)
    if key == "user" and not tokens.USER_RE.fullmatch(value):
        return f"invalid user= {value!r}"
    return None


def parse_policy(text: str, filename: str, include_loader: IncludeLoader | None = None) -> list[Rule]:
    """Parse one policy file's TEXT into rules.

    ``include_loader(path)`` returns ``(text, resolved filename)`` for
    ``!include`` and ``!include-service``; for ``!include-dir`` it gets the
    directory's path with a trailing '/' and returns the names of its
    ``*.policy`` files, one per line, and the resolved directory (see
    ``files.read_policy_path``). Relative include paths are resolved
    against FILENAME's directory before the loader sees them.

    Raises PolicySyntaxError("file:line: message") at the first error.
    """
    parser = _Parser(include_loader, errors=None)
    parser.parse(text, filename, (filename,))
    return parser.rules


def _load_dirs(dirs: Sequence[Path], parser: _Parser) -> None:
    """Parse the merged policy files of DIRS into PARSER's rules."""
    files: dict[str, str] = {}
    for directory in dirs:
        try:
            listing, resolved = read_policy_path(str(directory).rstrip("/") + "/")
        except FileNotFoundError:
            continue  # e.g. no admin policy directory yet: it holds no rules
        except (OSError, ValueError) as err:
            parser.fail(str(directory), 0, f"cannot read the policy directory: {_why(err)}")
            continue
        for name in c_locale_sorted(n for n in listing.split("\n") if n):
            if valid_file_name(name):
                files[name] = posixpath.join(resolved, name)  # a later directory replaces an earlier one
            else:
                parser.fail(posixpath.join(str(directory), name), 0, f"invalid policy file name: {_NAME_RULE}")
    for name in c_locale_sorted(files):
        try:
            text, resolved = read_policy_path(files[name])
        except (OSError, ValueError) as err:
            parser.fail(files[name], 0, f"cannot read: {_why(err)}")
            continue
        parser.parse(text, resolved, (resolved,))


def load_policy(dirs: Sequence[Path]) -> Policy:
    """Load the policy from DIRS, in precedence order (pass [shipped, admin]).

    A file in a later directory replaces the same-named file of an earlier
    one; the merged files are read in C-locale name order. A directory that
    does not exist holds no rules. Never raises: any error gives a Policy
    whose ``error`` says where, and which denies every call.
    """
    parser = _Parser(read_policy_path, errors=None)
    try:
        _load_dirs(dirs, parser)
    except PolicySyntaxError as err:
        return Policy(rules=(), error=str(err))
    return Policy(rules=tuple(parser.rules))


def unknown_qubes(rules: Sequence[Rule], known: set[str]) -> list[str]:
    """Warnings, as "file:line: message", for rules that name a qube that
    does not exist: names are not identities, so a qube created later
    under that name would get what the rule grants."""
    warnings = []
    for rule in rules:
        words = (rule.source, rule.target, rule.redirect, rule.default_redirect)
        for name in dict.fromkeys(n for n in map(tokens.named_qube, words) if n):
            if name not in known:
                warnings.append(
                    f"{rule.location}: names qube {_one_line(name)!r}, which does not exist; "
                    "a qube created under that name would be covered by this rule"
                )
    return warnings


def lint(dirs: Sequence[Path]) -> list[str]:
    """Every error in the policy of DIRS, as "file:line: message" (empty when it is valid)."""
    errors: list[str] = []
    _load_dirs(dirs, _Parser(read_policy_path, errors=errors))
    return errors
