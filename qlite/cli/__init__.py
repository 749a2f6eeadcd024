"""The ``qlite`` command line. Commands are thin: parse, call core, and
return a result (qlite.cli.results) that main() renders once, as a table
for people or as ``--json``.

qlite's own errors print one line on stderr and exit 125 (as podman and
docker do for ``run``); a command run in a qube passes its exit code through.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from qlite import __version__
from qlite.cli import commands
from qlite.cli.render import error, show
from qlite.domain.context import Context
from qlite.errors import QliteError

if TYPE_CHECKING:
    from qlite.cli.results import Result

# What a command runs: its parsed arguments in, what main() shows out.
Command = Callable[[argparse.Namespace], "Result | None"]


def build_parser(only: str | None = None) -> _Parser:
    """The whole parser; with ONLY, just that command's (building every
    command's parser costs more than some commands take to run). Its
    ``matched`` says whether ONLY was a command."""
    p = _Parser(
        prog="qlite",
        description="Qubes OS-style compartments on an ordinary Linux laptop.",
    )
    p.add_argument("--version", action="version", version=f"qlite {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p.matched = only is None

    p.commands = {}

    def cmd(name: str, fn: Command, help_: str, json_out: bool = False) -> _Parser | _Unused:
        if only is not None and name != only:
            return _Unused()
        p.matched = True
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        p.commands[name] = sp
        if json_out:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    def actions(sp: _Parser | _Unused, json_out: bool = False, **defaults: object) -> _AddAction:
        """SP's actions, each a parser of its own with only its own options;
        DEFAULTS are what an action without an option reads."""
        if isinstance(sp, _Unused):
            return lambda *a, **k: _Unused()
        sp.set_defaults(json=False, args=[], **defaults)
        acts = sp.add_subparsers(dest="action", metavar="ACTION")
        acts.required = True
        sp.actions = {}

        def action(name: str, help_: str, args: str | None = None) -> _Parser:
            ap = acts.add_parser(name, help=help_, description=help_)
            sp.actions[name] = ap
            if json_out:
                ap.add_argument("--json", action="store_true", help="machine-readable output")
            if args:
                ap.add_argument("args", nargs="*", metavar=args)
            return ap

        return action

    sp = cmd("create", commands.create, "create a new app qube", json_out=True)
    sp.add_argument("name")
    sp.add_argument("-t", "--template", help="template (default: global default_template)")
    sp.add_argument("-l", "--label", required=True, help="red, orange, yellow, green, gray, blue, purple or black")
    sp.add_argument("-C", "--class", dest="klass", default="AppVM", help="qube class (AppVM)")
    sp.add_argument("--netvm", help="none, default, or the uplink qube")
    sp.add_argument("--memory", type=_int("memory"), help="memory limit in MiB (default 400)")
    sp.add_argument("--vcpus", type=_int("vcpus"), help="CPU limit (default 2)")
    sp.add_argument("--mode", choices=("container", "vm"), help="isolation mode (container)")
    sp.add_argument("--prop", action="append", default=[], metavar="K=V", help="set a property")

    sp = cmd("start", commands.start, "start qubes")
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument("--skip-if-running", action="store_true")

    sp = cmd("shutdown", commands.shutdown, "shut qubes down (their volatile state is discarded)")
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--all", action="store_true", help="every running qube")
    sp.add_argument("--wait", action="store_true", help="wait until they have stopped")
    sp.add_argument("--timeout", type=_seconds("--timeout"), default=60.0, help="seconds before a kill (default 60)")
    sp.add_argument("--force", action="store_true", help="also a gateway whose clients still run")

    sp = cmd("kill", commands.kill, "stop qubes at once")
    sp.add_argument("names", nargs="+", metavar="NAME")

    sp = cmd("pause", commands.pause, "pause qubes")
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp = cmd("unpause", commands.unpause, "unpause qubes")
    sp.add_argument("names", nargs="+", metavar="NAME")

    sp = cmd("run", commands.run, "run a command in a qube, or in a new disposable")
    sp.add_argument("--disposable", "--dispvm", action="store_true", help="run in a new disposable")
    sp.add_argument("--dvm", metavar="NAME", help="disposable template (default: default_dispvm)")
    sp.add_argument("--template", metavar="T", help="a disposable straight from template T, with an empty home")
    sp.add_argument("-u", "--user", help="user to run as (default: the qube's default_user)")
    sp.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    sp.add_argument("--no-autostart", action="store_true", help="fail if the qube is not running")
    sp.add_argument(
        "--mode",
        choices=("container", "vm"),
        help="the disposable's isolation mode (default: its disposable template's)",
    )
    sp.add_argument("args", nargs=argparse.REMAINDER, metavar="[NAME] -- CMD")

    sp = cmd("ls", commands.ls, "list qubes and templates", json_out=True)
    sp.add_argument("--running", action="store_true", help="only running qubes")

    sp = cmd("prefs", commands.prefs, "show or set a qube's properties (or the global ones)", json_out=True)
    sp.add_argument("--global", dest="global_", action="store_true", help="global properties")
    sp.add_argument("-D", "--default", action="store_true", help="reset PROP to its default")
    sp.add_argument("args", nargs="*", metavar="NAME PROP VALUE")

    sp = cmd("features", commands.features, "show or set a qube's features", json_out=True)
    sp.add_argument("-D", "--unset", action="store_true", help="remove KEY")
    sp.add_argument("name")
    sp.add_argument("key", nargs="?")
    sp.add_argument("value", nargs="?")

    sp = cmd("tags", commands.tags, "list, add or remove a qube's tags", json_out=True)
    sp.add_argument("name")
    sp.add_argument("action", nargs="?", default="list", choices=("list", "add", "del"))
    sp.add_argument("tags", nargs="*")

    sp = cmd("firewall", commands.firewall, "list, add, delete or reset a qube's firewall rules", json_out=True)
    sp.add_argument("name")
    sp.add_argument("action", nargs="?", default="list", choices=("list", "add", "del", "reset"))
    sp.add_argument(
        "rule",
        nargs=argparse.REMAINDER,
        metavar="RULE | N",
        help="add: action=accept|drop [dsthost=] [proto=] [dstports=] [icmptype=] "
        "[specialtarget=dns] [expire=+S|EPOCH] [comment=...]; del: the rule number",
    )
    sp.add_argument("--before", type=_int("--before"), metavar="N", help="add: insert before rule N")

    sp = cmd("clone", commands.clone, "clone a qube, with a copy of its private data", json_out=True)
    sp.add_argument("source")
    sp.add_argument("name")

    sp = cmd("remove", commands.remove, "remove halted qubes and their private data")
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument("-f", "--force", action="store_true", help="shut them down first")

    sp = cmd("template", commands.template, "build, list, update, revert or remove templates")
    action = actions(sp, json_out=True, name=None, force=False, quiet=False)
    action("list", "the templates and their revisions")
    for name, help_ in (
        ("build", "build NAME from images/NAME (nothing if it is up to date)"),
        ("update", "upgrade NAME's packages into a new revision"),
        ("revert", "make NAME's previous revision the current one"),
        ("remove", "remove NAME and its revisions"),
        ("approve", "accept an image of NAME that was replaced outside qlite"),
    ):
        ap = action(name, help_)
        ap.add_argument("name", nargs="?")
        if name == "build":
            ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
        if name in ("build", "update"):
            ap.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    sp = cmd("doctor", commands.doctor, "check what this host can do", json_out=True)
    sp.add_argument("--no-kvm", action="store_true", help="skip the KVM guest probe")

    sp = cmd("setup", commands.setup, "set up the host's podman, build the default template and default-dvm")
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.add_argument(
        "--force", action="store_true", help="switch the host's podman to netavark even where it uses CNI networks"
    )

    cmd("reconcile", commands.reconcile, "remove what crashed qlite processes left behind", json_out=True)

    sp = cmd("daemon", commands.daemon, "the RPC broker (started on demand)")
    action = actions(sp)
    for name, help_ in (
        ("run", "serve in the foreground"),
        ("start", "start it in the background"),
        ("stop", "stop it"),
        ("status", "whether it runs"),
    ):
        action(name, help_)

    sp = cmd("policy", commands.policy, "evaluate, check and answer RPC policy")
    action = actions(sp, json_out=True)
    action("eval", "what the policy answers to a call", args="SERVICE[+ARG] SOURCE TARGET")
    action("lint", "check the policy files")
    action("ask", "list the open questions, or answer one", args="[ID allow [TARGET] | ID deny]")

    sp = cmd("splitgpg", commands.splitgpg, "keys in an offline vault qube, used by other qubes")
    action = actions(sp, json_out=True, client=[], autoaccept=None, name=None, email=None, secret=False)
    ap = action("setup", "make VAULT (offline) and let clients use it")
    ap.add_argument("vault")
    ap.add_argument("--client", action="append", default=[], metavar="QUBE", help="a qube that may use it")
    ap.add_argument(
        "--autoaccept", type=_int("--autoaccept"), metavar="SECONDS", help="how long a yes stands (default 300)"
    )
    ap = action("gen-key", "generate a key in VAULT")
    ap.add_argument("vault")
    ap.add_argument("--name", help="the key's name")
    ap.add_argument("--email", help="the key's email address")
    ap = action("import", "import keys into VAULT")
    ap.add_argument("vault")
    ap.add_argument("args", nargs="*", metavar="FILE|-")
    ap = action("list", "the keys in VAULT")
    ap.add_argument("vault")
    ap.add_argument("--secret", action="store_true", help="secret keys")
    ap = action("export", "a public key of VAULT's")
    ap.add_argument("vault")
    ap.add_argument("args", nargs="*", metavar="KEY")

    sp = cmd("device", commands.device, "block devices: list, attach, detach, assign, pair, eject")
    action = actions(sp, json_out=True, ro=False, exec=False, required=False, fs_uuid=None, serial=None)
    action("list", "the block devices, what has them and what they are assigned to")
    ap = action("attach", "give a drive to a running qube", args="QUBE DEVICE")
    ap.add_argument("--ro", action="store_true", help="read-only")
    ap.add_argument("--exec", action="store_true", help="allow running programs from it (no noexec)")
    action("detach", "take a drive back", args="[QUBE] DEVICE")
    ap = action("assign", "attach a drive whenever the qube starts", args="QUBE IDENT")
    ap.add_argument("--ro", action="store_true", help="read-only")
    ap.add_argument("--required", action="store_true", help="the qube does not start without it")
    action("unassign", "stop assigning a drive", args="QUBE IDENT")
    ap = action("pair", "start the qube when its drive is inserted, stop it when removed", args="QUBE")
    ap.add_argument("--ro", action="store_true", help="read-only")
    ap.add_argument("--fs-uuid", metavar="U", help="the drive's filesystem UUID")
    ap.add_argument("--serial", metavar="S", help="the drive's serial")
    action("eject", "sync, stop a paired qube, detach", args="DEVICE")

    sp = cmd("aem", commands.aem, "anti-evil-maid: measure, seal a secret, verify")
    action = actions(sp, json_out=True, secret_file=None, passphrase_file=None, boot_pcrs=None, yes=False)

    def passphrase(ap: _Parser | _Unused) -> None:
        ap.add_argument("--passphrase-file", metavar="P", help="without a TPM: the passphrase (- for stdin)")

    action("log", "the measurements and their chain")
    ap = action("seal", "seal a secret to the measurements")
    ap.add_argument("--secret-file", metavar="F", help="the secret to show when nothing changed (- for stdin)")
    ap.add_argument("--boot-pcrs", metavar="N,N", help="also bind to these TPM PCRs of the host's boot")
    passphrase(ap)
    ap = action("verify", "show the secret if nothing changed, or what did")
    passphrase(ap)
    ap.add_argument("-y", "--yes", action="store_true", help="confirm")
    ap = action("reseal", "seal the secret again to what is installed now")
    passphrase(ap)
    ap.add_argument("-y", "--yes", action="store_true", help="do not ask")
    action("enforce", "hold qubes until this boot is verified")
    action("relax", "stop holding qubes")

    sp = cmd("log", commands.log, "show a log", json_out=True)
    sp.add_argument("which", choices=("rpc",))
    sp.add_argument("-n", "--lines", type=_int("--lines", minimum=0), default=50, help="how many records (default 50)")

    sp = cmd("service", commands.service, "qlite's podman service (started on demand)")
    action = actions(sp)
    for name, help_ in (("start", "start it"), ("stop", "stop it"), ("status", "whether it runs")):
        action(name, help_)

    cmd("tui", commands.tui, "the terminal user interface: qubes, templates, logs and RPC questions")

    return p


# Commands whose last argument takes the rest of the line as it is (the
# command to run; a firewall rule, whose comment= may hold anything).
REST_OF_LINE = ("run", "firewall")


def parse(parser: _Parser, argv: list[str], command: str | None) -> argparse.Namespace:
    """Parse ARGV. A command's options may come anywhere after it, between
    its positional arguments too ('qlite prefs work --json memory'), and a
    word it does not take is reported with that command's --help. A
    command with actions ('qlite device attach') hands the rest to the
    action's own parser, which takes only that action's options."""
    sub = parser.commands.get(command) if command else None
    if sub is None or command is None:
        return parser.parse_args(argv)
    rest = argv[1:]
    if sub.actions:
        return _parse_action(sub, rest, command)
    if command in REST_OF_LINE:
        args, extra = sub.parse_known_args(rest)
    else:
        args, extra = sub.parse_known_intermixed_args(rest)
    if extra:
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    args.command = command
    return args


def _parse_action(sub: _Parser, rest: list[str], command: str) -> argparse.Namespace:
    takes_value = {
        opt
        for ap in sub.actions.values()
        for a in ap._actions
        if a.nargs is None and a.option_strings
        for opt in a.option_strings
    }
    i = 0
    while i < len(rest) and rest[i].startswith("-") and rest[i] not in ("-h", "--help"):
        i += 1 + (rest[i] in takes_value)
    if i >= len(rest) or rest[i] not in sub.actions:
        return sub.parse_args(rest)  # the help, or the error naming the actions
    word = rest[i]
    args = argparse.Namespace(**{a.dest: a.default for a in sub._actions if a.dest != argparse.SUPPRESS})
    for key, value in sub._defaults.items():  # the command's defaults, then the action's
        setattr(args, key, value)
    ap = sub.actions[word]
    more, extra = ap.parse_known_intermixed_args(rest[:i] + rest[i + 1 :])
    if extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    for key, value in vars(more).items():
        setattr(args, key, value)
    args.command, args.action = command, word
    return args


def _int(name: str, minimum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be {minimum} or more, not {text!r}")
        return value

    return parse


def _seconds(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{name} takes seconds, 0 or more, not {text!r}")
        return value

    return parse


class _Unused:
    """Where the arguments of a command that was not asked for go."""

    def add_argument(self, *args: object, **kwargs: object) -> None:
        pass


class _AddAction(Protocol):
    """build_parser's actions(): adds one action to a command's parser."""

    def __call__(self, name: str, help_: str, args: str | None = None) -> _Parser | _Unused: ...


class _Parser(argparse.ArgumentParser):
    """Usage errors are qlite errors too: one line, exit 125."""

    matched = True  # see build_parser
    commands: dict[str, _Parser] = {}  # build_parser's: by name
    actions: dict[str, _Parser] = {}  # a command's, by action word (see parse)

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"qlite: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(125)


def main(argv: list[str] | None = None, ctx: Context | None = None) -> int:
    """Run one qlite command: ARGV (default: this process's), over CTX
    (default: the home the environment names)."""
    argv = sys.argv[1:] if argv is None else argv
    first = argv[0] if argv and not argv[0].startswith("-") else None
    parser = build_parser(first)
    if not parser.matched:  # not a command: the full parser says so, with the choices
        parser = build_parser()
    args = parse(parser, argv, first)
    args.ctx = ctx
    try:
        result = args.func(args)
        # After the command: firewall takes a --json from its rule's words.
        return show(result, bool(getattr(args, "json", False)))
    except QliteError as exc:
        error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("qlite: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
