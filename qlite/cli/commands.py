"""The CLI's commands. Each reads its arguments, calls core and returns
what it has to show (qlite.cli.results); main() prints it, once. Only
what streams (run, the daemon, the TUI) or asks (aem) writes as it goes."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from qlite.cli.render import error, info, printable, progress_printer, show
from qlite.cli.results import (
    Lines,
    Markup,
    Message,
    PolicyAnswer,
    Raw,
    Record,
    Result,
    Table,
    TemplateApproved,
    TemplateRemoved,
    TemplateReverted,
    TemplateRevision,
    TemplateUpdate,
)
from qlite.domain.context import Context
from qlite.domain.labels import label_colour
from qlite.domain.model import json_value, parse_property
from qlite.domain.prefs import GlobalPrefs
from qlite.engines.base import Stdio
from qlite.engines.interrupts import InterruptRelay, forwarding_sigint
from qlite.errors import InvalidValue, QliteError
from qlite.rpc import audit

if TYPE_CHECKING:  # annotations only: the managers load when a command needs them
    from qlite.aem.manager import AemManager
    from qlite.core.qubes import QubeManager
    from qlite.core.templates import TemplateManager
    from qlite.net.firewall import Rule

DVM_NAME = "default-dvm"
DEFAULT_TEMPLATE = "debian-12"


def _given(args: argparse.Namespace) -> Context:
    """The context main() was given (tests: a temporary home over fakes),
    or this process's, from the environment."""
    ctx = getattr(args, "ctx", None) or Context.from_env()
    if ctx.on_warning is None:
        ctx.on_warning = lambda message: info(f"qlite: warning: {printable(message)}")
    if ctx.on_progress is None:
        ctx.on_progress = lambda message: info(f"qlite: {message}")
    return ctx


def _context(args: argparse.Namespace) -> Context:
    """The context, after reaping disposables that crashed qlite processes
    left behind (cheap: it reads the store and touches the engine only if
    there is something to reap)."""
    from qlite.core.reconcile import reap  # noqa: PLC0415 - pulls in the lifecycle (~20 ms)

    ctx = _given(args)
    report = reap(ctx)
    if not report.empty:
        names = ", ".join(report.disposables + report.interrupted) or "engine objects"
        info(f"qlite: reaped leftovers of dead qlite processes: {names}")
    return ctx


def _qubes(ctx: Context) -> QubeManager:
    from qlite.core.qubes import QubeManager  # noqa: PLC0415 - the lifecycle costs ~20 ms; not every command needs it

    return QubeManager(ctx)


def _templates(ctx: Context) -> TemplateManager:
    from qlite.core.templates import TemplateManager  # noqa: PLC0415 - ~20 ms; only some commands need templates

    return TemplateManager(ctx)


def _each(qm: QubeManager, names: list[str], fn: Callable[[str], object]) -> Result | None:
    """Apply FN to every name; report each failure as it happens (the rest
    go on); exit 125 if any failed. Every name is checked first: a typo
    among them changes nothing."""
    names = list(dict.fromkeys(names))
    unknown: list[QliteError] = []
    for name in names:
        try:
            qm.get(name)
        except QliteError as exc:
            unknown.append(exc)
    for problem in unknown:
        error(problem)
    if unknown:
        return Result(exit_code=125)
    failed = False
    for name in names:
        try:
            fn(name)
        except QliteError as exc:
            error(exc)
            failed = True
    return Result(exit_code=125) if failed else None


# -- qubes ---------------------------------------------------------------------


def create(args: argparse.Namespace) -> Result:
    ctx = _context(args)
    props = {}
    for item in args.prop:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidValue(f"--prop expects KEY=VALUE, got {item!r}")
        props[key] = value
    if args.mode:
        props["mode"] = args.mode
    qm = _qubes(ctx)
    q = qm.create(
        args.name,
        label=args.label,
        template=args.template,
        klass=args.klass,
        netvm=args.netvm,
        memory=args.memory,
        vcpus=args.vcpus,
        props=props,
    )
    return Result(data=qm.info(q, {}).as_json())


def start(args: argparse.Namespace) -> Result | None:
    qm = _qubes(_context(args))
    return _each(qm, args.names, lambda n: qm.start(n, skip_if_running=args.skip_if_running))


def shutdown(args: argparse.Namespace) -> Result | None:
    ctx = _context(args)
    qm = _qubes(ctx)
    names = list(args.names)
    if args.all:
        running = qm.containers()
        names = [q.name for q in qm.list() if q.name in running and not q.is_disposable]
    elif not names:
        raise InvalidValue("name the qubes to shut down, or use --all")
    # Clients before their gateways, deepest first.
    names.sort(key=lambda n: -qm.net_depth(qm.get(n)) if qm.exists(n) else 0)
    return _each(qm, names, lambda n: qm.shutdown(n, timeout=args.timeout, force=args.force))


def kill(args: argparse.Namespace) -> Result | None:
    qm = _qubes(_context(args))
    return _each(qm, args.names, qm.kill)


def pause(args: argparse.Namespace) -> Result | None:
    qm = _qubes(_context(args))
    return _each(qm, args.names, qm.pause)


def unpause(args: argparse.Namespace) -> Result | None:
    qm = _qubes(_context(args))
    return _each(qm, args.names, qm.unpause)


def split_run_args(rest: list[str], disposable: bool) -> tuple[str | None, list[str]]:
    """[NAME] [--] CMD... -> (NAME, CMD). Pure. Only a "--" right where the
    command starts separates it; a later "--" belongs to the command."""
    tokens = list(rest)
    name = None
    if not disposable:
        if tokens[:1] == ["--"]:
            tokens = tokens[1:]
        if not tokens:
            raise InvalidValue("usage: qlite run NAME -- CMD... (or qlite run --disposable -- CMD...)")
        name, tokens = tokens[0], tokens[1:]
    if tokens[:1] == ["--"]:
        tokens = tokens[1:]
    if not tokens:
        raise InvalidValue("no command given: qlite run [NAME | --disposable] -- CMD...")
    return name, tokens


def run(args: argparse.Namespace) -> Result:
    from qlite.core.disposables import DisposableManager, Terminated, exit_code_for  # noqa: PLC0415 - only run needs it

    disposable = args.disposable or bool(args.dvm) or bool(args.template)
    name, cmd = split_run_args(args.args, disposable)
    ctx = _context(args)
    # Ctrl-C goes to the command once it runs (then SIGTERM, then SIGKILL
    # if it does not stop); its exit status is what we return.
    relay = InterruptRelay()
    stdio = Stdio(stdin=sys.stdin.buffer, tty=args.tty, interrupts=relay)
    if args.tty and not sys.stdin.isatty():
        raise InvalidValue("-t needs a terminal on stdin")
    # The command's output is its own, streamed as it comes; what is left
    # to show is its exit status.
    try:
        with forwarding_sigint(relay):
            if disposable:
                code = DisposableManager(ctx).run(
                    cmd, stdio, dvm=args.dvm, template=args.template, user=args.user, mode=args.mode
                )
            else:
                if args.mode:
                    raise InvalidValue("--mode applies to a new disposable: add --disposable")
                assert name is not None  # split_run_args names the qube unless the run is disposable
                code = _qubes(ctx).run(name, cmd, stdio, user=args.user, autostart=not args.no_autostart)
    except (KeyboardInterrupt, Terminated) as exc:
        info("qlite: interrupted; the disposable was destroyed" if disposable else "qlite: interrupted")
        code = exit_code_for(exc)
    return Result(exit_code=code)


def ls(args: argparse.Namespace) -> Table:
    from qlite.domain.preload import READY  # noqa: PLC0415 - preload brings the agent's sockets (~7 ms)

    ctx = _context(args)
    qm = _qubes(ctx)
    containers = qm.containers()
    rows = [i.as_json() for i in qm.infos(containers)]
    if args.running:
        rows = [r for r in rows if r["state"] == "Running"]
    for r in rows:
        r["preloaded"] = READY in r["tags"]
    if args.json:
        from qlite.core.usage import qube_usage  # noqa: PLC0415 - psutil costs ~18 ms; only ls --json shows usage

        # What each running qube costs the host (preloaded members too);
        # measured only for --json, the table does not show it.
        usage = qube_usage(ctx, containers=containers)
        for r in rows:
            u = usage.get(r["name"])
            r["usage"] = (
                None
                if u is None
                else {"rss_mib": round(u.rss_mib, 1), "pss_mib": round(u.pss_mib, 1), "processes": u.processes}
            )
    return Table(
        ["NAME", "STATE", "CLASS", "LABEL", "TEMPLATE", "NETVM", "MODE", "NETPATH"],
        [
            [
                r["name"],
                "Preloaded" if r["preloaded"] and r["state"] == "Running" else r["state"],
                r["class"],
                r["label"],
                r["template"],
                r["netvm"],
                r["mode"],
                r["netpath"],
            ]
            for r in rows
        ],
        [label_colour(r["label"]) for r in rows],
        data=rows,
    )


def prefs(args: argparse.Namespace) -> Result | None:
    ctx = _context(args)
    qm = _qubes(ctx)
    if args.global_:
        return _global_prefs(ctx, qm, GlobalPrefs(ctx.store), args)
    if not args.args:
        raise InvalidValue("usage: qlite prefs NAME [PROP [VALUE]] (or --global)")
    name, rest = args.args[0], args.args[1:]
    if len(rest) > 2:
        raise InvalidValue("usage: qlite prefs NAME [PROP [VALUE]]")
    if not rest:
        values = qm.get_prefs(name)
        return Table(
            ["PROPERTY", "", "VALUE"],
            [[k, "D" if d else "-", v] for k, (v, d) in values.items()],
            data={k: json_value(k, v) for k, (v, _d) in values.items()},
        )
    prop = rest[0]
    if args.default:
        qm.reset_pref(name, prop)
    elif len(rest) == 2:
        qm.set_pref(name, prop, rest[1])
    else:
        values = qm.get_prefs(name)
        if prop not in values:
            parse_property(prop, "")  # raises the one-line "no such property"
        value = values[prop][0]
        return Message(str(value), data={prop: json_value(prop, value)})
    return None


def _global_prefs(ctx: Context, qm: QubeManager, gp: GlobalPrefs, args: argparse.Namespace) -> Result | None:
    rest = args.args
    if len(rest) > 2:
        raise InvalidValue("usage: qlite prefs --global [PROP [VALUE]]")
    if not rest:
        values = gp.all()
        return Table(
            ["PROPERTY", "", "VALUE"],
            [[k, "D" if gp.is_default(k) else "-", v] for k, v in values.items()],
            data={k: v or None for k, v in values.items()},
        )
    key = rest[0]
    if args.default:
        gp.reset(key)
        return None
    if len(rest) == 1:
        value = gp.get(key)
        return Message(str(value), data={key: value or None})
    value = rest[1]
    value = "" if value == "none" else value
    if key == "default_template" and value:
        qm.check_template(value)
    elif key == "default_dispvm":
        qm.check_dispvm(value)
    elif key == "default_netvm":
        qm.check_default_netvm(value)
    gp.set(key, value)
    return None


def features(args: argparse.Namespace) -> Result | None:
    ctx = _context(args)
    qm = _qubes(ctx)
    if args.name != "dom0":
        qm.get(args.name)
    f = qm.features
    if args.key is None:
        values = f.all(args.name)
        return Record(values, data=values)
    if args.unset:
        f.delete(args.name, args.key)
    elif args.value is not None:
        f.set(args.name, args.key, args.value)
    else:
        value = f.get(args.name, args.key)
        return Message(str(value), data={args.key: value})
    return None


def tags(args: argparse.Namespace) -> Result | None:
    qm = _qubes(_context(args))
    if args.action == "list":
        current = qm.tags(args.name)
        if args.tags:  # like qvm-tags VM list TAG: exit 0 if present, 1 if not (the exit code is the answer)
            present = args.tags[0] in current
            return Lines(args.tags[:1] if present else [], exit_code=0 if present else 1)
        return Lines(current, data=current)
    if not args.tags:
        raise InvalidValue(f"name the tags to {args.action}")
    if args.action == "add":
        qm.add_tags(args.name, args.tags)
    else:
        qm.del_tags(args.name, args.tags)
    return None


def split_firewall_flags(words: list[str]) -> tuple[list[str], int | None, bool]:
    """Take --before N and --json out of a rule's words (they may follow
    it). A comment= swallows the rest of the words, flags included. Pure."""
    out: list[str] = []
    before, as_json = None, False
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("comment="):
            out.extend(words[i:])
            break
        if word == "--json":
            as_json = True
        elif word == "--before" or word.startswith("--before="):
            value = word.partition("=")[2] if "=" in word else (words[i + 1] if i + 1 < len(words) else "")
            if "=" not in word:
                i += 1
            if not value.isdecimal():
                raise InvalidValue(f"--before needs a rule number, not {value!r}")
            before = int(value)
        else:
            out.append(word)
        i += 1
    return out, before, as_json


def firewall(args: argparse.Namespace) -> Result:
    from qlite.net.firewall import parse_rule  # noqa: PLC0415 - only firewall parses rules

    args.rule, before, as_json = split_firewall_flags(args.rule)
    args.before = before if before is not None else args.before
    args.json = args.json or as_json
    qm = _qubes(_context(args))
    q = qm.get(args.name)
    net = qm.net
    rules: Sequence[Rule] = list(net.live_rules(q.name))
    if args.action == "list":
        if args.rule:
            raise InvalidValue("list takes no rule")
        return Table(
            ["NO", "ACTION", "HOST", "PROTOCOL", "PORT(S)", "SPECIAL TARGET", "ICMP TYPE", "EXPIRE", "COMMENT"],
            [
                [
                    i,
                    r.action,
                    r.dsthost,
                    r.proto,
                    r.to_json().get("dstports"),
                    r.specialtarget,
                    r.icmptype,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.expire)) if r.expire else None,
                    r.comment,
                ]
                for i, r in enumerate(rules)
            ],
            data=[r.to_json() for r in rules],
        )
    if args.action == "add":
        rules = net.add_rule(q.name, parse_rule(args.rule, time.time()), args.before)
    elif args.action == "del":
        if len(args.rule) != 1 or not args.rule[0].isdecimal():
            raise InvalidValue("usage: qlite firewall NAME del N (a rule number from 'list')")
        rules = net.delete_rule(q.name, int(args.rule[0]))
    else:
        if args.rule:
            raise InvalidValue("reset takes no rule")
        rules = net.reset_rules(q.name)
    return Result(data=[r.to_json() for r in rules])


def clone(args: argparse.Namespace) -> Result:
    qm = _qubes(_context(args))
    q = qm.clone(args.source, args.name)
    return Result(data=qm.info(q, {}).as_json())


def remove(args: argparse.Namespace) -> Result | None:
    qm = _qubes(_context(args))

    def rm(name: str) -> None:
        if args.force:
            qm.kill(name)
        qm.remove(name)

    return _each(qm, args.names, rm)


# -- templates -------------------------------------------------------------------


def template(args: argparse.Namespace) -> Result:
    ctx = _context(args)
    tm = _templates(ctx)
    progress = progress_printer(args.quiet)
    if args.action == "list":
        infos = [tm.info(t) for t in tm.list()]
        built = {i.name for i in infos}
        rows = [
            [i.name, i.current_rev, i.image_id[:12], ",".join(map(str, i.revisions)), ", ".join(i.users)] for i in infos
        ]
        # The table also lists what could be built; --json lists what is.
        rows += [[n, None, "(not built)", None, None] for n in tm.available() if n not in built]
        return Table(["TEMPLATE", "REVISION", "IMAGE", "REVISIONS", "USED BY"], rows, data=[i.as_json() for i in infos])
    if not args.name:
        raise InvalidValue(f"usage: qlite template {args.action} NAME")
    if args.action == "build":
        rev, _new = tm.build(args.name, progress, force=args.force)
        return Result(data=TemplateRevision(args.name, rev.rev, rev.image_id, rev.origin))
    if args.action == "update":
        before = tm.get(args.name).current_rev
        rev = tm.update(args.name, progress)
        return Result(data=TemplateUpdate(args.name, rev.rev, rev.image_id, rev.origin, updated=rev.rev != before))
    if args.action == "revert":
        rev = tm.revert(args.name)
        return Result(
            data=TemplateReverted(args.name, rev.rev, rev.image_id),
            note=f"{args.name} is back at revision {rev.rev}; qubes use it from their next start",
        )
    if args.action == "approve":
        image = tm.approve(args.name)
        return Result(
            data=TemplateApproved(args.name, image),
            note=f"{args.name}: approved image {image[:12]}; qubes start from it again",
        )
    tm.remove(args.name)
    return Result(data=TemplateRemoved(args.name))


def _read_secret_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    except OSError as exc:
        raise InvalidValue(f"cannot read the {what} file {path}: {exc.strerror}") from None
    return data.rstrip(b"\n") if what == "passphrase" else data


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise InvalidValue(f"{question} (answer with --yes when not at a terminal)")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def aem(args: argparse.Namespace) -> Result | None:
    from qlite.aem.manager import AemManager  # noqa: PLC0415 - only aem needs it (~11 ms)

    ctx = _context(args)
    am = AemManager(ctx, _templates(ctx))
    passphrase = _read_secret_file(args.passphrase_file, "passphrase")
    if args.action == "log":
        log_ = am.log()
        where = f"TPM PCR {log_['pcr']} ({log_['tpm']})" if log_["tpm"] else "no TPM: software chain only"
        return Table(
            ["#", "COMPONENT", "SHA256"],
            [[i, m["name"], m["digest"]] for i, m in enumerate(log_["measurements"])],
            data=log_,
            footnote=f"chain {log_['chain']}; {where}; sealed: {log_['sealed'] or 'no'}; "
            f"enforced: {'yes' if log_['enforced'] else 'no'}",
        )
    if args.action == "seal":
        secret = _read_secret_file(args.secret_file, "secret")
        if secret is None:
            raise InvalidValue("usage: qlite aem seal --secret-file F [--passphrase-file P] [--boot-pcrs 0,2,4,7]")
        boot = [int(p) for p in args.boot_pcrs.split(",")] if args.boot_pcrs else []
        mode = am.seal(secret, passphrase, boot)
        weaker = (
            "qlite: warning: no TPM: sealed with a key from your passphrase, bound to the measurements. "
            "This is weaker than a TPM: anyone with the passphrase and the sealed file can read the secret.\n"
            if mode == "passphrase"
            else ""
        )
        return Result(note=f"{weaker}sealed to the current measurements ({mode})")
    if args.action == "verify":
        return _aem_verify(am, passphrase, args)
    if args.action == "reseal":
        if not _confirm("Reseal the secret to what is installed now (only after an update you made)?", args.yes):
            return Result(note="nothing changed", exit_code=1)
        return Result(note=f"resealed to the current measurements ({am.reseal(passphrase)})")
    if args.action in ("enforce", "relax"):
        am.set_enforced(args.action == "enforce")
        return Result(
            note="qubes start only after 'qlite aem verify' in each boot"
            if args.action == "enforce"
            else "qubes start without anti-evil-maid verification"
        )
    raise InvalidValue(f"unknown aem action {args.action!r}")


def _aem_verify(am: AemManager, passphrase: bytes | None, args: argparse.Namespace) -> Result | None:
    result = am.verify(passphrase)
    data = {**result.as_json(), "secret": result.secret.decode(errors="replace") if result.ok else None}
    if not result.ok:
        changed = [
            f"CHANGED {name}: sealed {(old or 'absent')[:16]}, now {(new or 'absent')[:16]}"
            for name, old, new in result.changes
        ]
        return Result(
            data=data,
            exit_code=1,
            footnote="\n".join([*changed, f"qlite: error: anti-evil-maid verification FAILED: {result.detail}"]),
        )
    shown = Message(result.secret.decode(errors="replace").rstrip("\n"), data=data)
    if not am.enforced():
        return shown
    # The question is about the secret, so the secret is shown before it is asked.
    show(shown, args.json)
    if not _confirm("Is this your secret?", args.yes):
        return None
    am.confirm()
    return Result(note="confirmed: qubes may start")


# -- host -------------------------------------------------------------------------


def doctor(args: argparse.Namespace) -> Markup:
    from rich.markup import escape  # noqa: PLC0415 - rich is slow to import

    from qlite.doctor import FAIL, WARN, run_checks  # noqa: PLC0415 - only doctor needs it (~9 ms)

    ctx = _given(args)
    checks = run_checks(ctx, kvm=not args.no_kvm)
    marks = {"ok": "[green]  ok[/]", "warn": "[yellow]WARN[/]", "fail": "[red]FAIL[/]"}
    lines = []
    for c in checks:
        lines.append(f"{marks[c.status]}  [bold]{c.name}[/]: {escape(c.detail)}")
        if c.fix and c.status in (WARN, FAIL):
            lines.append(f"{'':>6}fix: {escape(c.fix)}")
    return Markup(
        lines, data=[c.as_json() for c in checks], exit_code=1 if any(c.status == FAIL for c in checks) else 0
    )


def setup(args: argparse.Namespace) -> Result:
    from qlite.runtime.hostpodman import install_dropin  # noqa: PLC0415 - only setup needs it (~7 ms)

    ctx = _context(args)
    progress = progress_printer(args.quiet)
    dropin = install_dropin(ctx.paths, force=args.force)
    if dropin.held_back:
        ctx.warn(
            f"{dropin.held_back}: the host's podman keeps CNI, so 'podman network ls' will not list "
            "qlite's networks; 'qlite setup --force' switches it to netavark"
        )
    elif dropin.changed:
        info(f"the host's podman now uses netavark and knows qlite's runtimes ({dropin.path})")
    tm, qm, gp = _templates(ctx), _qubes(ctx), GlobalPrefs(ctx.store)
    _rev, new = tm.build(DEFAULT_TEMPLATE, progress)
    if gp.is_default("default_template"):
        gp.set("default_template", DEFAULT_TEMPLATE)
    if not qm.exists(DVM_NAME):
        info(f"creating {DVM_NAME}, the default disposable template")
        qm.create(DVM_NAME, label="red", template=DEFAULT_TEMPLATE, props={"template_for_dispvms": "True"})
    if gp.is_default("default_dispvm"):
        gp.set("default_dispvm", DVM_NAME)
    from qlite.vm.kernel import fetch_package  # noqa: PLC0415 - only setup needs it (~8 ms)

    # VM-mode qubes boot this package's kernel; each home unpacks it when
    # its first VM starts.
    fetch_package(progress)
    return Result(
        note=f"ready: template {DEFAULT_TEMPLATE}{' (added now)' if new else ''}, disposable template {DVM_NAME}"
    )


def reconcile(args: argparse.Namespace) -> Lines:
    from qlite.core.reconcile import reap  # noqa: PLC0415 - pulls in the lifecycle (~20 ms)

    report = reap(_given(args), sweep=True)
    lines = (
        ["nothing to reconcile"]
        if report.empty
        else [f"removed {kind}: {', '.join(items)}" for kind, items in asdict(report).items() if items]
    )
    return Lines(lines, data=report)


def service(args: argparse.Namespace) -> Message:
    from qlite.engines.podman import PodmanService  # noqa: PLC0415 - only service needs it (~15 ms)

    svc = PodmanService(_given(args).paths)
    return _start_stop_status(args.action, "podman service", svc.ensure, svc.stop, svc.alive, svc.pid)


def _start_stop_status(
    action: str,
    what: str,
    ensure: Callable[[], None],
    stop: Callable[[], bool],
    running: Callable[[], bool],
    pid: Callable[[], int | None],
) -> Message:
    """start / stop / status of one of qlite's background processes;
    status exits 1 when it is not running."""
    if action == "start":
        ensure()
        return Message(f"{what} running (pid {pid()})")
    if action == "stop":
        return Message("stopped" if stop() else "not running")
    alive = running()
    return Message(
        f"{what} {'running' if alive else 'stopped'}" + (f" (pid {pid()})" if alive else ""),
        exit_code=0 if alive else 1,
    )


def tui(args: argparse.Namespace) -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InvalidValue("qlite tui needs a terminal")
    # Textual is imported only here: the rest of qlite never loads it.
    from qlite.tui.app import build_app  # noqa: PLC0415 - textual is loaded only for the TUI

    build_app(Context.from_env).run()


# -- RPC ----------------------------------------------------------------------------


def daemon(args: argparse.Namespace) -> Result:
    from qlite.host.daemonctl import DaemonControl  # noqa: PLC0415 - only daemon and policy ask need it

    paths = _given(args).paths
    if args.action == "run":
        from qlite.daemon import run  # noqa: PLC0415 - the daemon's modules cost ~30 ms

        return Result(exit_code=run(paths))  # it serves in the foreground, logging as it goes
    ctl = DaemonControl(paths)
    return _start_stop_status(args.action, "qlite daemon", ctl.ensure, ctl.stop, ctl.running, ctl.pid)


def policy(args: argparse.Namespace) -> Result:
    if args.action == "eval":
        return _policy_eval(args)
    if args.action == "lint":
        return _policy_lint(args)
    return _policy_ask(args)


def _policy_eval(args: argparse.Namespace) -> Lines:
    from qlite.rpc.broker import evaluate_call  # noqa: PLC0415 - the broker costs ~30 ms; only policy needs it
    from qlite.rpc.policy import Request  # noqa: PLC0415 - only policy needs it (~13 ms)

    if len(args.args) != 3:
        raise InvalidValue("usage: qlite policy eval SERVICE[+ARG] SOURCE TARGET")
    service_arg, source, target = args.args
    service, _, argument = service_arg.partition("+")
    ctx = _context(args)
    if source in ("dom0", "@adminvm"):
        answer = PolicyAnswer("allow", target, [], None, None, "calls from dom0 bypass policy")
    else:
        qubes = _qubes(ctx)
        qubes.get(source)
        res, _policy = evaluate_call(ctx.paths, qubes, Request(service, argument, source, target))
        answer = PolicyAnswer(
            res.action,
            res.target,
            list(res.choices),
            res.user,
            f"{res.rule.file}:{res.rule.line}" if res.rule else None,
            res.reason,
        )
    lines = [answer.action + (f" target={answer.target}" if answer.target else "")]
    if answer.choices:
        lines.append(f"  choices: {', '.join(answer.choices)}")
    lines.append(f"  {_with_rule(answer.reason, answer.rule)}")
    return Lines(lines, data=answer)


def _with_rule(reason: str, rule: str | None) -> str:
    """REASON, naming RULE once: most reasons already say where they come from."""
    return reason if not rule or rule in reason else f"{reason} [{rule}]"


def _policy_lint(args: argparse.Namespace) -> Lines:
    from qlite.rpc.policy import lint, load_policy, policy_dirs, unknown_qubes  # noqa: PLC0415 - only policy needs it

    ctx = _given(args)
    dirs = policy_dirs(ctx.paths)
    errors = lint(dirs)
    known = {q.name for q in _qubes(ctx).list()} | {t.name for t in _templates(ctx).list()}
    warnings = [] if errors else unknown_qubes(load_policy(dirs).rules, known)
    lines = [*errors, *(f"warning: {w}" for w in warnings)]
    if not errors:
        counted = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
        lines.append(f"policy OK{counted}")
    return Lines(lines, data={"errors": errors, "warnings": warnings}, exit_code=1 if errors else 0)


def _policy_ask(args: argparse.Namespace) -> Result:
    from qlite.host.daemonctl import DaemonControl  # noqa: PLC0415 - only daemon and policy ask need it

    ctl = DaemonControl(_given(args).paths)
    if not args.args:
        asks = ctl.asks()
        if not asks:
            return Message("no pending questions", data=asks)
        return Table(
            ["ID", "SOURCE", "SERVICE", "ARGUMENT", "TARGET", "CHOICES", "DEFAULT", "SECONDS"],
            [
                [
                    a["id"],
                    a["source"],
                    a["service"],
                    a["argument"],
                    a["target"],
                    ", ".join(a["choices"]),
                    a["default_target"],
                    a["seconds_left"],
                ]
                for a in asks
            ],
            data=asks,
        )
    words = args.args
    if (
        len(words) not in (2, 3)
        or not words[0].isdecimal()
        or words[1] not in ("allow", "deny")
        or (words[1] == "deny" and len(words) == 3)
    ):
        raise InvalidValue("usage: qlite policy ask [ID allow [TARGET] | ID deny]")
    reply = ctl.answer(int(words[0]), words[1] == "allow", words[2] if len(words) == 3 else None)
    return Message(
        f"question {reply['id']}: " + (f"allowed to {reply['target']}" if reply["allow"] else "denied"), data=reply
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def device(args: argparse.Namespace) -> Result | None:
    ctx = _context(args)
    dm = _qubes(ctx).devices
    rest = list(args.args)

    def need(n: int, usage: str) -> list[str]:
        if len(rest) != n:
            raise InvalidValue(f"usage: qlite device {args.action} {usage}")
        return rest

    if args.action == "list":
        need(0, "[--json]")
        rows = dm.list()
        return Table(
            ["DEVICE", "SIZE", "IDENT", "LABEL", "ATTACHED TO", "ASSIGNED TO"],
            [
                [
                    r.device.name,
                    _size(r.device.size),
                    r.device.ident,
                    r.device.label or "-",
                    (r.attached_to + (" (ro)" if r.read_only else ""))
                    if r.attached_to
                    else (f"host: {r.host_mounts[0]}" if r.host_mounts else "-"),
                    ", ".join(r.assigned_to) or "-",
                ]
                for r in rows
            ],
            data=[r.as_json() for r in rows],
        )
    if args.action == "attach":
        qube, dev = need(2, "QUBE DEVICE [--ro] [--exec]")
        d = dm.attach(qube, dev, read_only=args.ro, allow_exec=args.exec)
        return Result(note=f"{d.name} attached to {qube}" + (" read-only" if args.ro else ""))
    if args.action == "detach":
        if len(rest) == 1:
            names = dm.detach(rest[0])
        else:
            qube, dev = need(2, "[QUBE] DEVICE")
            names = dm.detach(dev, qube=qube)
        return Result(note=f"detached {', '.join(names)}")
    if args.action in ("assign", "pair"):
        qube, ident = (
            need(2, "QUBE IDENT") if args.action == "assign" else (*need(1, "QUBE --fs-uuid U | --serial S"), "")
        )
        if args.action == "pair":
            if bool(args.fs_uuid) == bool(args.serial):
                raise InvalidValue("usage: qlite device pair QUBE --fs-uuid U | --serial S")
            ident = f"uuid:{args.fs_uuid}" if args.fs_uuid else f"serial:{args.serial}"
        dm.assign(qube, ident, read_only=args.ro, required=args.required, paired=args.action == "pair")
        return Result(note=f"{ident} {'paired with' if args.action == 'pair' else 'assigned to'} {qube}")
    if args.action == "unassign":
        qube, ident = need(2, "QUBE IDENT")
        dm.unassign(qube, ident)
        return None
    if args.action == "eject":
        (dev,) = need(1, "DEVICE")
        holder = dm.eject(dev)
        return Result(note=f"{dev}: synced and detached{f' from {holder}' if holder else ''}; it is safe to remove")
    raise InvalidValue(f"unknown device action {args.action!r}")


def log(args: argparse.Namespace) -> Lines:
    records = audit.read(_given(args).paths.rpc_log, args.lines)
    lines = []
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("time", 0)))
        what = f"{r.get('service', '?')}" + (f"+{r['argument']}" if r.get("argument") else "")
        to = r.get("resolved") or r.get("target") or "?"
        extra = f" exit={r['exit']}" if "exit" in r else ""
        reason = r.get("reason") if r.get("decision") != "done" else ""
        why = _with_rule(reason, r.get("rule")) if reason else (f"[{r['rule']}]" if r.get("rule") else "")
        lines.append(
            printable(
                f"{when} {r.get('source', '?')} -> {to} {what}: {r.get('decision', '?')}{extra}"
                + (f" - {why}" if why else "")
            )
        )
    return Lines(lines, data=records)


# -- split GPG ------------------------------------------------------------------------


def splitgpg(args: argparse.Namespace) -> Result:
    from qlite.gpg import splitgpg as sg  # noqa: PLC0415 - only splitgpg needs it
    from qlite.gpg.vault import VaultGPG  # noqa: PLC0415 - only splitgpg needs it

    ctx = _context(args)
    if args.action == "setup":
        result = sg.setup(ctx, _qubes(ctx), args.vault, args.client, args.autoaccept)
        return Result(
            data=result,
            footnote=f"{'created' if result.created else 'configured'} vault {result.vault} (offline); "
            f"clients: {', '.join(result.clients) or 'none yet'}; policy in {result.policy_file}",
        )
    _qubes(ctx).get(args.vault)
    vault = VaultGPG(ctx, args.vault)
    if args.action == "gen-key":
        if not args.name or not args.email:
            raise InvalidValue("usage: qlite splitgpg gen-key VAULT --name NAME --email EMAIL")
        fingerprint = vault.generate(args.name, args.email)
        return Message(fingerprint, data={"fingerprint": fingerprint})
    if args.action == "import":
        if len(args.args) != 1:
            raise InvalidValue("usage: qlite splitgpg import VAULT FILE (or - for stdin)")
        try:
            data = sys.stdin.buffer.read() if args.args[0] == "-" else open(args.args[0], "rb").read()
        except OSError as exc:
            raise InvalidValue(f"cannot read {args.args[0]}: {exc.strerror}") from None
        imported = vault.import_keys(data)
        return Message(f"imported {imported['count']} key(s) into {args.vault}", data=imported)
    if args.action == "list":
        keys = vault.list_keys(secret=args.secret)
        return Table(
            ["FINGERPRINT", "UIDS", "ALGORITHM", "CREATED", "EXPIRES"],
            [
                [
                    k.fingerprint,
                    "; ".join(k.uids),
                    k.algorithms,
                    (k.created_at or "")[:10],
                    (k.expires_at or "never")[:10],
                ]
                for k in keys
            ],
            data=keys,
        )
    if len(args.args) != 1:
        raise InvalidValue("usage: qlite splitgpg export VAULT KEY")
    # The armoured key is the output, with --json too: a script pipes it on.
    return Raw(vault.export_public(args.args[0]))
