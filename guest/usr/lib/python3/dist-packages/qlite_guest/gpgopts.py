"""Split GPG's filter: which gpg command lines may go from a client qube to
the vault (qubes.Gpg). Pure; the client (qlite-gpg) and the service run the
same ``parse``, and the service trusts only its own run.

Grammar (as gpg's, but stricter):

    argv     := option* ["--"] operand*
    option   := "--" LONG ["=" VALUE]      LONG exactly as in OPTIONS (no abbreviations)
              | "--" LONG VALUE            for an option that takes a value
              | "-" CLUSTER                letters from SHORT, e.g. -bsa; a letter that
                                           takes a value ends the cluster and takes the rest
                                           of it (-uKEY) or the next argument (-bsau KEY)

- Options end at "--" or at the first operand ("-" alone is an operand: stdin).
  As in gpg, nothing after the first operand is an option; unlike gpg, an
  operand that starts with "-" (other than "-") must follow "--".
- Exactly one command, or one of these pairs: -bs (detach-sign), -s
  --clearsign (clearsign), -se (sign-encrypt), and --fingerprint with a
  listing command (alone it means --list-keys, as in gpg).
- Operands, by command:
    sign, detach-sign, clearsign, encrypt, sign-encrypt, decrypt:  [FILE | -]
    verify:  [SIGFILE | -] [DATAFILE | -]...   (at most one "-")
    list-keys, list-secret-keys, list-sigs, export:  KEYNAME...
    version:  nothing
  No FILE operand means stdin. A FILE is never opened by the vault: the
  client sends its content and the service substitutes a path of its own.
- Option values are checked (VALUE_RULES): --status-fd only 1 or 2,
  --keyid-format and --trust-model from fixed sets, algorithm and charset
  names as plain words, key names and comments printable.

The result is a GpgRequest: the command, the options in one spelling each
(``--local-user=KEY``), and typed operands. ``args()`` is again a valid
command line, ``gpg_argv()`` is what the vault runs.

Refusals raise ForbiddenOption (message "Forbidden option: ..." or
"Forbidden option value: ...") or UsageError; both mean gpg's exit 2.
"""

from __future__ import annotations

from collections.abc import Sequence


class OptionError(ValueError):
    """A command line the filter refuses; the message is one line."""


class ForbiddenOption(OptionError):
    """An option, or an option's value, outside the allowlist."""


class UsageError(OptionError):
    """Allowed options put together wrongly (missing value, two commands, bad operands)."""


class FrozenRecord:
    """A value object: its fields are its __slots__; equal, hashed and shown
    by them, and read-only. What a frozen dataclass gives, without importing
    dataclasses: that module imports inspect, which costs a Python start in
    a qube more than all of split GPG's own code."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, FrozenRecord)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")


class Option(FrozenRecord):
    __slots__ = ("name", "command", "value")
    name: str                   # gpg's own long name: what the vault's gpg receives
    command: str | None         # the command flag this option sets
    value: str | None           # the kind of value it takes (VALUE_RULES), or None for a flag

    def __init__(self, name: str, command: str | None = None, value: str | None = None) -> None:
        self._set(name=name, command=command, value=value)


def _flag(name: str) -> Option:
    return Option(name)


def _command(name: str) -> Option:
    return Option(name, command=name)


# Accepted spellings (without "--") -> the option. Every Option.name is a full
# gpg 2.2 option name, so gpg itself never expands it as an abbreviation.
OPTIONS: dict[str, Option] = {
    # commands
    "sign": _command("sign"),
    "detach-sign": _command("detach-sign"),
    "clearsign": _command("clearsign"),
    "clear-sign": _command("clearsign"),
    "encrypt": _command("encrypt"),
    "decrypt": _command("decrypt"),
    "verify": _command("verify"),
    "list-keys": _command("list-keys"),
    "list-public-keys": _command("list-keys"),
    "list-secret-keys": _command("list-secret-keys"),
    "list-sigs": _command("list-sigs"),
    "fingerprint": _command("fingerprint"),
    "export": _command("export"),
    "version": _command("version"),
    # listing and output format
    "with-fingerprint": _flag("with-fingerprint"),
    "with-keygrip": _flag("with-keygrip"),
    "with-colons": _flag("with-colons"),
    "fixed-list-mode": _flag("fixed-list-mode"),
    "keyid-format": Option("keyid-format", value="keyid-format"),
    "armor": _flag("armor"),
    "no-armor": _flag("no-armor"),
    "textmode": _flag("textmode"),
    "charset": Option("display-charset", value="name"),
    "display-charset": Option("display-charset", value="name"),
    "utf8-strings": _flag("utf8-strings"),
    "emit-version": _flag("emit-version"),
    "no-emit-version": _flag("no-emit-version"),
    "comment": Option("comment", value="text"),
    "no-comments": _flag("no-comments"),
    "no-comment": _flag("no-comments"),
    # keys and algorithms
    "local-user": Option("local-user", value="key"),
    "recipient": Option("recipient", value="key"),
    "hidden-recipient": Option("hidden-recipient", value="key"),
    "throw-keyids": _flag("throw-keyids"),
    "digest-algo": Option("digest-algo", value="name"),
    "cipher-algo": Option("cipher-algo", value="name"),
    "compress-algo": Option("compress-algo", value="name"),
    "trust-model": Option("trust-model", value="trust-model"),
    "always-trust": _flag("always-trust"),
    # how gpg talks
    "status-fd": Option("status-fd", value="fd"),
    "batch": _flag("batch"),
    "no-tty": _flag("no-tty"),
    "yes": _flag("yes"),
    "quiet": _flag("quiet"),
    "verbose": _flag("verbose"),
    "no-verbose": _flag("no-verbose"),
}

SHORT: dict[str, str] = {
    "s": "sign", "b": "detach-sign", "d": "decrypt", "e": "encrypt",
    "k": "list-keys", "K": "list-secret-keys", "a": "armor", "t": "textmode",
    "q": "quiet", "v": "verbose",
    "u": "local-user", "r": "recipient", "R": "hidden-recipient",
}

# The command flags seen -> the command. Anything else is "conflicting commands".
COMMANDS: dict[frozenset[str], str] = {
    frozenset({"sign"}): "sign",
    frozenset({"detach-sign"}): "detach-sign",
    frozenset({"detach-sign", "sign"}): "detach-sign",
    frozenset({"clearsign"}): "clearsign",
    frozenset({"clearsign", "sign"}): "clearsign",
    frozenset({"encrypt"}): "encrypt",
    frozenset({"encrypt", "sign"}): "sign-encrypt",
    frozenset({"decrypt"}): "decrypt",
    frozenset({"verify"}): "verify",
    frozenset({"list-keys"}): "list-keys",
    frozenset({"fingerprint"}): "list-keys",
    frozenset({"list-keys", "fingerprint"}): "list-keys",
    frozenset({"list-secret-keys"}): "list-secret-keys",
    frozenset({"list-secret-keys", "fingerprint"}): "list-secret-keys",
    frozenset({"list-sigs"}): "list-sigs",
    frozenset({"list-sigs", "fingerprint"}): "list-sigs",
    frozenset({"export"}): "export",
    frozenset({"version"}): "version",
}

# What the vault's gpg always gets, before the client's options.
VAULT_OPTIONS = ("--batch", "--no-tty", "--no-secmem-warning")

DATA_COMMANDS = frozenset({"sign", "detach-sign", "clearsign", "encrypt", "sign-encrypt", "decrypt"})
KEY_COMMANDS = frozenset({"list-keys", "list-secret-keys", "list-sigs", "export"})

MAX_ARGS = 1024
MAX_FILES = 16     # file operands in one request (only --verify takes several)
MAX_KEYS = 256     # key names in one listing or export
MAX_KEY_LEN = 1024
MAX_TEXT_LEN = 512

KEYID_FORMATS = frozenset({"none", "short", "0xshort", "long", "0xlong"})
# gpg's trust models minus tofu and tofu+pgp, which write to the vault's TOFU database.
TRUST_MODELS = frozenset({"pgp", "classic", "direct", "always", "auto"})
# A name is [A-Za-z0-9][A-Za-z0-9._+:-]{0,63}: checked with sets, not re,
# which would cost every split-GPG call its import inside the qube.
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
NAME_CHARS = _ALNUM | frozenset("._+:-")


def is_name(value: str) -> bool:
    return 0 < len(value) <= 64 and value[0] in _ALNUM and NAME_CHARS.issuperset(value)


class Operand(FrozenRecord):
    __slots__ = ("kind", "value")
    kind: str   # "stdin" ("-"), "file" (content sent by the client) or "key" (a key name)
    value: str

    def __init__(self, kind: str, value: str) -> None:
        self._set(kind=kind, value=value)


class GpgRequest(FrozenRecord):
    """A command line that passed the filter, in one normal form."""

    __slots__ = ("command", "options", "operands")
    command: str
    options: tuple[str, ...]     # e.g. ("--detach-sign", "--sign", "--armor", "--local-user=KEY")
    operands: tuple[Operand, ...]

    def __init__(self, command: str, options: tuple[str, ...], operands: tuple[Operand, ...]) -> None:
        self._set(command=command, options=options, operands=operands)

    @property
    def files(self) -> tuple[str, ...]:
        """The FILE operands, in order."""
        return tuple(op.value for op in self.operands if op.kind == "file")

    @property
    def reads_stdin(self) -> bool:
        """Whether gpg will read its stdin: a "-" operand, or no operand for
        a data command or --verify (listing and export never do)."""
        if any(op.kind == "stdin" for op in self.operands):
            return True
        return not self.operands and (self.command in DATA_COMMANDS or self.command == "verify")

    def with_files(self, names: Sequence[str]) -> GpgRequest:
        """The same request with the i-th FILE operand renamed NAMES[i]."""
        if len(names) != len(self.files):
            raise ValueError(f"{len(self.files)} file operands, {len(names)} names")
        it = iter(names)
        operands = tuple(Operand("file", next(it)) if op.kind == "file" else op for op in self.operands)
        return GpgRequest(self.command, self.options, operands)

    def args(self) -> list[str]:
        """The normal form as a command line; parse(args()) gives this request back."""
        return [*self.options, "--", *(op.value for op in self.operands)]

    def gpg_argv(self, program: str) -> list[str]:
        """What the vault runs. --batch --no-tty always, and no "using
        insecure memory" warning on every call (gVisor cannot lock memory;
        the vault's isolation is what keeps the key); data commands write
        to stdout (never next to an input file, as gpg would by default)."""
        output = ["--output", "-"] if self.command in DATA_COMMANDS else []
        return [program, *VAULT_OPTIONS, *self.options, *output, "--",
                *(op.value for op in self.operands)]


def parse(argv: Sequence[str]) -> GpgRequest:
    """Check ARGV against the allowlist; return its normal form."""
    if len(argv) > MAX_ARGS:
        raise UsageError(f"too many arguments ({len(argv)}; at most {MAX_ARGS})")
    options: list[str] = []
    flags: set[str] = set()
    operands: list[str] = []
    after_dashdash = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not isinstance(arg, str):
            raise UsageError("arguments must be strings")
        if arg == "--":
            operands = list(argv[i:])
            after_dashdash = True
            break
        if arg == "-" or not arg.startswith("-"):
            operands = list(argv[i - 1:])
            break
        if arg.startswith("--"):
            name, eq, inline = arg[2:].partition("=")
            option = _long_option(name)
            value = None
            if option.value is not None:
                if eq:
                    value = inline
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise UsageError(f"option --{name} needs a value")
            elif eq:
                raise UsageError(f"option --{name} takes no value")
            _add(option, value, options, flags)
            continue
        cluster = arg[1:]
        j = 0
        while j < len(cluster):
            letter = cluster[j]
            j += 1
            if letter not in SHORT:
                raise ForbiddenOption(f"Forbidden option: -{_show(letter)}")
            option = OPTIONS[SHORT[letter]]
            value = None
            if option.value is not None:
                if j < len(cluster):
                    value, j = cluster[j:], len(cluster)
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise UsageError(f"option -{letter} needs a value")
            _add(option, value, options, flags)
    command = _command_of(flags)
    return GpgRequest(command, tuple(options), tuple(_operands(command, operands, after_dashdash)))


def _long_option(name: str) -> Option:
    option = OPTIONS.get(name)
    if option is not None:
        return option
    message = f"Forbidden option: --{_show(name)}"
    if name and any(known.startswith(name) for known in OPTIONS):
        message += " (abbreviations are not accepted; write the option in full)"
    raise ForbiddenOption(message)


def _add(option: Option, value: str | None, options: list[str], flags: set[str]) -> None:
    if option.command is not None:
        flags.add(option.command)
    if option.value is None:
        options.append(f"--{option.name}")
        return
    assert value is not None
    options.append(f"--{option.name}={_check_value(option, value)}")


def _check_value(option: Option, value: str) -> str:
    """VALUE normalised, or ForbiddenOption."""
    problem = None
    kind = option.value
    if kind == "fd":
        if value not in ("1", "2"):
            problem = "only 1, stdout, or 2, stderr"
    elif kind == "keyid-format":
        value = value.lower()
        if value not in KEYID_FORMATS:
            problem = "use one of " + ", ".join(sorted(KEYID_FORMATS))
    elif kind == "trust-model":
        value = value.lower()
        if value not in TRUST_MODELS:
            problem = "use one of " + ", ".join(sorted(TRUST_MODELS))
    elif kind == "name":
        if not is_name(value):
            problem = "a name of letters, digits and . _ + : - (at most 64)"
    elif kind == "key":
        problem = _key_problem(value)
    elif kind == "text":
        if len(value) > MAX_TEXT_LEN or not value.isprintable():
            problem = f"printable text of at most {MAX_TEXT_LEN} characters"
    else:  # pragma: no cover - a table entry without a rule
        raise AssertionError(kind)
    if problem:
        raise ForbiddenOption(f"Forbidden option value: --{option.name}={_show(value)} ({problem})")
    return value


def _key_problem(value: str) -> str | None:
    if not value:
        return "an empty key name"
    if value.startswith("-"):
        return "a key name must not start with '-'"
    if len(value) > MAX_KEY_LEN or not value.isprintable():
        return f"a key name is printable text of at most {MAX_KEY_LEN} characters"
    return None


def _command_of(flags: set[str]) -> str:
    if not flags:
        raise UsageError("no command given (e.g. --sign, --detach-sign, --clearsign, --encrypt, --decrypt, "
                         "--verify, --list-keys, --export)")
    command = COMMANDS.get(frozenset(flags))
    if command is None:
        raise UsageError("conflicting commands: " + " ".join(f"--{f}" for f in sorted(flags)))
    return command


def _operands(command: str, args: list[str], after_dashdash: bool) -> list[Operand]:
    if not after_dashdash:
        for arg in args:
            if arg.startswith("-") and arg != "-":
                raise UsageError(f"{_show(arg)}: options must come before file and key names; "
                                 "a name that starts with '-' must follow '--'")
    if command == "version":
        if args:
            raise UsageError("--version takes no arguments")
        return []
    if command in KEY_COMMANDS:
        if len(args) > MAX_KEYS:
            raise UsageError(f"too many key names ({len(args)}; at most {MAX_KEYS})")
        for arg in args:
            # A leading '-' is fine here: gpg_argv puts every operand after "--".
            if not arg or len(arg) > MAX_KEY_LEN or not arg.isprintable():
                raise UsageError(f"bad key name {_show(arg)!r}: "
                                 f"use printable text of 1 to {MAX_KEY_LEN} characters")
        return [Operand("key", arg) for arg in args]
    limit = MAX_FILES if command == "verify" else 1
    if len(args) > limit:
        what = "at most one input file" if limit == 1 else f"at most {limit} files"
        raise UsageError(f"--{command} takes {what} (got {len(args)})")
    if args.count("-") > 1:
        raise UsageError("stdin ('-') can be named only once")
    if "" in args:
        raise UsageError("an empty file name")
    return [Operand("stdin", "-") if arg == "-" else Operand("file", arg) for arg in args]


def _show(text: str) -> str:
    """TEXT for a one-line message: printable and short."""
    shown = text if text.isprintable() else repr(text)[1:-1]
    return shown if len(shown) <= 80 else shown[:77] + "..."
