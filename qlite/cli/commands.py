"""The CLI's commands. Each parses its arguments, calls core and renders."""

from __future__ import annotations

import argparse
import sys

from qlite.cli.render import emit_json, info, printable, progress_printer, table
from qlite.core.context import Context
from qlite.core.labels import label_colour
from qlite.engines.base import Stdio
from qlite.errors import InvalidValue, QliteError

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
    from qlite.core.reconcile import reap  # noqa: PLC0415

    ctx = _given(args)
    report = reap(ctx)
    if not report.empty:
        names = ", ".join(report.disposables + report.interrupted) or "engine objects"
        info(f"qlite: reaped leftovers of dead qlite processes: {names}")
    return ctx


def _qubes(ctx: Context):
    from qlite.core.qubes import QubeManager  # noqa: PLC0415

    return QubeManager(ctx)


def _templates(ctx: Context):
    from qlite.core.templates import TemplateManager  # noqa: PLC0415

    return TemplateManager(ctx)


def _each(qm, names: list[str], fn) -> int:
    """Apply FN to every name; report each failure; 125 if any failed.
    Every name is checked first: a typo among them changes nothing."""
    names = list(dict.fromkeys(names))
    unknown: list[QliteError] = []
    for name in names:
        try:
            qm.get(name)
        except QliteError as exc:
            unknown.append(exc)
    for problem in unknown:
        sys.stderr.write(f"qlite: error: {printable(problem)}\n")
    if unknown:
        return 125
    failed = False
    for name in names:
        try:
            fn(name)
        except QliteError as exc:
            sys.stderr.write(f"qlite: error: {printable(exc)}\n")
            failed = True
    return 125 if failed else 0


# -- qubes ---------------------------------------------------------------------


def create(args: argparse.Namespace) -> int:
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
        args.name, label=args.label, template=args.template, klass=args.klass,
        netvm=args.netvm, memory=args.memory, vcpus=args.vcpus, props=props,
    )
    if args.json:
        emit_json(qm.info(q, {}).as_json())
    return 0


def start(args: argparse.Namespace) -> int:
    qm = _qubes(_context(args))
    return _each(qm, args.names, lambda n: qm.start(n, skip_if_running=args.skip_if_running))


def shutdown(args: argparse.Namespace) -> int:
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


def kill(args: argparse.Namespace) -> int:
    qm = _qubes(_context(args))
    return _each(qm, args.names, qm.kill)


def pause(args: argparse.Namespace) -> int:
    qm = _qubes(_context(args))
    return _each(qm, args.names, qm.pause)


def unpause(args: argparse.Namespace) -> int:
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


def run(args: argparse.Namespace) -> int:
    from qlite.core.disposables import DisposableManager, Terminated, exit_code_for  # noqa: PLC0415
    from qlite.engines.interrupts import InterruptRelay, forwarding_sigint  # noqa: PLC0415

    disposable = args.disposable or bool(args.dvm) or bool(args.template)
    name, cmd = split_run_args(args.args, disposable)
    ctx = _context(args)
    # Ctrl-C goes to the command once it runs (then SIGTERM, then SIGKILL
    # if it does not stop); its exit status is what we return.
    relay = InterruptRelay()
    stdio = Stdio(stdin=sys.stdin.buffer, tty=args.tty, interrupts=relay)
    if args.tty and not sys.stdin.isatty():
        raise InvalidValue("-t needs a terminal on stdin")
    try:
        with forwarding_sigint(relay):
            if disposable:
                return DisposableManager(ctx).run(
                    cmd, stdio, dvm=args.dvm, template=args.template, user=args.user, mode=args.mode
                )
            if args.mode:
                raise InvalidValue("--mode applies to a new disposable: add --disposable")
            return _qubes(ctx).run(name, cmd, stdio, user=args.user, autostart=not args.no_autostart)
    except (KeyboardInterrupt, Terminated) as exc:
        info("qlite: interrupted; the disposable was destroyed" if disposable else "qlite: interrupted")
        return exit_code_for(exc)


def ls(args: argparse.Namespace) -> int:
    from qlite.core.preload import READY  # noqa: PLC0415

    ctx = _context(args)
    qm = _qubes(ctx)
    containers = qm.containers()
    rows = [i.as_json() for i in qm.infos(containers)]
    if args.running:
        rows = [r for r in rows if r["state"] == "Running"]
    for r in rows:
        r["preloaded"] = READY in r["tags"]
    if args.json:
        from qlite.core.usage import qube_usage  # noqa: PLC0415

        # What each running qube costs the host (preloaded members too).
        usage = qube_usage(ctx, containers=containers)
        for r in rows:
            u = usage.get(r["name"])
            r["usage"] = None if u is None else {"rss_mib": round(u.rss_mib, 1), "pss_mib": round(u.pss_mib, 1),
                                                  "processes": u.processes}
        emit_json(rows)
        return 0
    table(
        ["NAME", "STATE", "CLASS", "LABEL", "TEMPLATE", "NETVM", "MODE", "NETPATH"],
        [[r["name"], "Preloaded" if r["preloaded"] and r["state"] == "Running" else r["state"], r["class"],
          r["label"], r["template"], r["netvm"], r["mode"], r["netpath"]] for r in rows],
        [label_colour(r["label"]) for r in rows],
    )
    return 0


def prefs(args: argparse.Namespace) -> int:
    from qlite.core.model import json_value  # noqa: PLC0415
    from qlite.core.prefs import GlobalPrefs  # noqa: PLC0415

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
        if args.json:
            emit_json({k: json_value(k, v) for k, (v, _d) in values.items()})
        else:
            table(["PROPERTY", "", "VALUE"], [[k, "D" if d else "-", v] for k, (v, d) in values.items()])
        return 0
    prop = rest[0]
    if args.default:
        qm.reset_pref(name, prop)
    elif len(rest) == 2:
        qm.set_pref(name, prop, rest[1])
    else:
        values = qm.get_prefs(name)
        if prop not in values:
            from qlite.core.model import parse_property  # noqa: PLC0415

            parse_property(prop, "")  # raises the one-line "no such property"
        value = values[prop][0]
        emit_json({prop: json_value(prop, value)}) if args.json else print(value)
    return 0


def _global_prefs(ctx, qm, gp, args) -> int:
    rest = args.args
    if len(rest) > 2:
        raise InvalidValue("usage: qlite prefs --global [PROP [VALUE]]")
    if not rest:
        values = gp.all()
        if args.json:
            emit_json({k: v or None for k, v in values.items()})
        else:
            table(["PROPERTY", "", "VALUE"], [[k, "D" if gp.is_default(k) else "-", v] for k, v in values.items()])
        return 0
    key = rest[0]
    if args.default:
        gp.reset(key)
        return 0
    if len(rest) == 1:
        value = gp.get(key)
        emit_json({key: value or None}) if args.json else print(value)
        return 0
    value = rest[1]
    value = "" if value == "none" else value
    if key == "default_template" and value:
        qm.check_template(value)
    elif key == "default_dispvm":
        qm.check_dispvm(value)
    elif key == "default_netvm":
        qm.check_default_netvm(value)
    gp.set(key, value)
    return 0


def features(args: argparse.Namespace) -> int:
    ctx = _context(args)
    qm = _qubes(ctx)
    if args.name != "dom0":
        qm.get(args.name)
    f = qm.features
    if args.key is None:
        values = f.all(args.name)
        if args.json:
            emit_json(values)
        else:
            for k, v in values.items():
                print(f"{k:<30} {v}")
        return 0
    if args.unset:
        f.delete(args.name, args.key)
    elif args.value is not None:
        f.set(args.name, args.key, args.value)
    else:
        value = f.get(args.name, args.key)
        emit_json({args.key: value}) if args.json else print(value)
    return 0


def tags(args: argparse.Namespace) -> int:
    qm = _qubes(_context(args))
    if args.action == "list":
        current = qm.tags(args.name)
        if args.tags:  # like qvm-tags VM list TAG: exit 0 if present, 1 if not
            present = args.tags[0] in current
            if not args.json:
                print(args.tags[0] if present else "", end="\n" if present else "")
            return 0 if present else 1
        emit_json(current) if args.json else print("\n".join(current)) if current else None
        return 0
    if not args.tags:
        raise InvalidValue(f"name the tags to {args.action}")
    if args.action == "add":
        qm.add_tags(args.name, args.tags)
    else:
        qm.del_tags(args.name, args.tags)
    return 0


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


def firewall(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from qlite.net.firewall import parse_rule  # noqa: PLC0415

    args.rule, before, as_json = split_firewall_flags(args.rule)
    args.before = before if before is not None else args.before
    args.json = args.json or as_json
    qm = _qubes(_context(args))
    q = qm.get(args.name)
    net = qm.net
    rules = list(net.live_rules(q.name))
    if args.action == "list":
        if args.rule:
            raise InvalidValue("list takes no rule")
        if args.json:
            emit_json([r.to_json() for r in rules])
        else:
            table(["NO", "ACTION", "HOST", "PROTOCOL", "PORT(S)", "SPECIAL TARGET", "ICMP TYPE", "EXPIRE", "COMMENT"],
                  [[i, r.action, r.dsthost, r.proto, r.to_json().get("dstports"), r.specialtarget, r.icmptype,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.expire)) if r.expire else None,
                    r.comment] for i, r in enumerate(rules)])
        return 0
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
    if args.json:
        emit_json([r.to_json() for r in rules])
    return 0


def clone(args: argparse.Namespace) -> int:
    qm = _qubes(_context(args))
    q = qm.clone(args.source, args.name)
    if args.json:
        emit_json(qm.info(q, {}).as_json())
    return 0


def remove(args: argparse.Namespace) -> int:
    qm = _qubes(_context(args))

    def rm(name: str) -> None:
        if args.force:
            qm.kill(name)
        qm.remove(name)

    return _each(qm, args.names, rm)


# -- templates -------------------------------------------------------------------


def template(args: argparse.Namespace) -> int:
    ctx = _context(args)
    tm = _templates(ctx)
    progress = progress_printer(args.quiet)
    if args.action == "list":
        infos = [tm.info(t) for t in tm.list()]
        if args.json:
            emit_json([i.as_json() for i in infos])
        else:
            built = {i.name for i in infos}
            rows = [[i.name, i.current_rev, i.image_id[:12], ",".join(map(str, i.revisions)),
                     ", ".join(i.users)] for i in infos]
            rows += [[n, None, "(not built)", None, None] for n in tm.available() if n not in built]
            table(["TEMPLATE", "REVISION", "IMAGE", "REVISIONS", "USED BY"], rows)
        return 0
    if not args.name:
        raise InvalidValue(f"usage: qlite template {args.action} NAME")
    if args.action == "build":
        rev, _new = tm.build(args.name, progress, force=args.force)
        result = {"name": args.name, "revision": rev.rev, "image_id": rev.image_id, "origin": rev.origin}
    elif args.action == "update":
        before = tm.get(args.name).current_rev
        rev = tm.update(args.name, progress)
        # "updated" is false when there was nothing to upgrade: no new revision.
        result = {"name": args.name, "revision": rev.rev, "image_id": rev.image_id, "origin": rev.origin,
                  "updated": rev.rev != before}
    elif args.action == "revert":
        rev = tm.revert(args.name)
        info(f"{args.name} is back at revision {rev.rev}; qubes use it from their next start")
        result = {"name": args.name, "revision": rev.rev, "image_id": rev.image_id}
    elif args.action == "approve":
        image = tm.approve(args.name)
        info(f"{args.name}: approved image {image[:12]}; qubes start from it again")
        result = {"name": args.name, "image_id": image}
    else:
        tm.remove(args.name)
        result = {"name": args.name, "removed": True}
    if args.json:
        emit_json(result)
    return 0


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


def aem(args: argparse.Namespace) -> int:
    from qlite.aem.manager import AemManager  # noqa: PLC0415

    ctx = _context(args)
    am = AemManager(ctx, _templates(ctx))
    passphrase = _read_secret_file(args.passphrase_file, "passphrase")
    if args.action == "log":
        log_ = am.log()
        if args.json:
            emit_json(log_)
            return 0
        table(["#", "COMPONENT", "SHA256"], [[i, m["name"], m["digest"]] for i, m in enumerate(log_["measurements"])])
        where = f"TPM PCR {log_['pcr']} ({log_['tpm']})" if log_["tpm"] else "no TPM: software chain only"
        info(f"chain {log_['chain']}; {where}; sealed: {log_['sealed'] or 'no'}; "
             f"enforced: {'yes' if log_['enforced'] else 'no'}")
        return 0
    if args.action == "seal":
        secret = _read_secret_file(args.secret_file, "secret")
        if secret is None:
            raise InvalidValue("usage: qlite aem seal --secret-file F [--passphrase-file P] [--boot-pcrs 0,2,4,7]")
        boot = [int(p) for p in args.boot_pcrs.split(",")] if args.boot_pcrs else []
        mode = am.seal(secret, passphrase, boot)
        if mode == "passphrase":
            info("qlite: warning: no TPM: sealed with a key from your passphrase, bound to the measurements. "
                 "This is weaker than a TPM: anyone with the passphrase and the sealed file can read the secret.")
        info(f"sealed to the current measurements ({mode})")
        return 0
    if args.action == "verify":
        result = am.verify(passphrase)
        if args.json:
            emit_json({**result.as_json(), "secret": result.secret.decode(errors="replace") if result.ok else None})
        elif result.ok:
            sys.stdout.write(result.secret.decode(errors="replace").rstrip("\n") + "\n")
        else:
            for name, old, new in result.changes:
                info(f"CHANGED {name}: sealed {(old or 'absent')[:16]}, now {(new or 'absent')[:16]}")
            info(f"qlite: error: anti-evil-maid verification FAILED: {result.detail}")
        if not result.ok:
            return 1
        if am.enforced() and _confirm("Is this your secret?", args.yes):
            am.confirm()
            info("confirmed: qubes may start")
        return 0
    if args.action == "reseal":
        if not _confirm("Reseal the secret to what is installed now (only after an update you made)?", args.yes):
            info("nothing changed")
            return 1
        info(f"resealed to the current measurements ({am.reseal(passphrase)})")
        return 0
    if args.action in ("enforce", "relax"):
        am.set_enforced(args.action == "enforce")
        info("qubes start only after 'qlite aem verify' in each boot" if args.action == "enforce"
             else "qubes start without anti-evil-maid verification")
        return 0
    raise InvalidValue(f"unknown aem action {args.action!r}")


# -- host -------------------------------------------------------------------------


def doctor(args: argparse.Namespace) -> int:
    from qlite.doctor import FAIL, WARN, run_checks  # noqa: PLC0415

    ctx = _given(args)
    checks = run_checks(ctx, kvm=not args.no_kvm)
    if args.json:
        emit_json([c.as_json() for c in checks])
    else:
        marks = {"ok": "[green]  ok[/]", "warn": "[yellow]WARN[/]", "fail": "[red]FAIL[/]"}
        from rich.console import Console  # noqa: PLC0415
        from rich.markup import escape  # noqa: PLC0415

        console = Console(soft_wrap=True, highlight=False)
        for c in checks:
            console.print(f"{marks[c.status]}  [bold]{c.name}[/]: {escape(c.detail)}")
            if c.fix and c.status in (WARN, FAIL):
                console.print(f"{'':>6}fix: {escape(c.fix)}")
    return 1 if any(c.status == FAIL for c in checks) else 0


def setup(args: argparse.Namespace) -> int:
    from qlite.core.prefs import GlobalPrefs  # noqa: PLC0415
    from qlite.runtime.hostpodman import install_dropin  # noqa: PLC0415

    ctx = _context(args)
    progress = progress_printer(args.quiet)
    dropin = install_dropin(ctx.paths, force=args.force)
    if dropin.held_back:
        ctx.warn(f"{dropin.held_back}: the host's podman keeps CNI, so 'podman network ls' will not list "
                 "qlite's networks; 'qlite setup --force' switches it to netavark")
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
    from qlite.vm.kernel import fetch_package  # noqa: PLC0415

    # VM-mode qubes boot this package's kernel; each home unpacks it when
    # its first VM starts.
    fetch_package(progress)
    info(f"ready: template {DEFAULT_TEMPLATE}{' (added now)' if new else ''}, disposable template {DVM_NAME}")
    return 0


def reconcile(args: argparse.Namespace) -> int:
    from qlite.core.reconcile import reap  # noqa: PLC0415

    report = reap(_given(args), sweep=True)
    if args.json:
        emit_json(report.as_json())
    elif report.empty:
        print("nothing to reconcile")
    else:
        for kind, items in report.as_json().items():
            if items:
                print(f"removed {kind}: {', '.join(items)}")
    return 0


def service(args: argparse.Namespace) -> int:
    from qlite.engines.podman import PodmanService  # noqa: PLC0415

    svc = PodmanService(_given(args).paths)
    return _start_stop_status(args.action, "podman service", svc.ensure, svc.stop, svc.alive, svc.pid)


def _start_stop_status(action: str, what: str, ensure, stop, running, pid) -> int:
    """start / stop / status of one of qlite's background processes;
    status exits 1 when it is not running."""
    if action == "start":
        ensure()
        print(f"{what} running (pid {pid()})")
    elif action == "stop":
        print("stopped" if stop() else "not running")
    else:
        alive = running()
        print(f"{what} {'running' if alive else 'stopped'}" + (f" (pid {pid()})" if alive else ""))
        return 0 if alive else 1
    return 0


def tui(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InvalidValue("qlite tui needs a terminal")
    # Textual is imported only here: the rest of qlite never loads it.
    from qlite.tui.app import build_app  # noqa: PLC0415

    build_app(Context.from_env).run()
    return 0


# -- RPC ----------------------------------------------------------------------------


def daemon(args: argparse.Namespace) -> int:
    from qlite.host.daemonctl import DaemonControl  # noqa: PLC0415

    paths = _given(args).paths
    if args.action == "run":
        from qlite.daemon import run  # noqa: PLC0415

        return run(paths)
    ctl = DaemonControl(paths)
    return _start_stop_status(args.action, "qlite daemon", ctl.ensure, ctl.stop, ctl.running, ctl.pid)


def policy(args: argparse.Namespace) -> int:
    if args.action == "eval":
        return _policy_eval(args)
    if args.action == "lint":
        return _policy_lint(args)
    return _policy_ask(args)


def _policy_eval(args: argparse.Namespace) -> int:
    from qlite.rpc.broker import evaluate_call  # noqa: PLC0415
    from qlite.rpc.policy import Request  # noqa: PLC0415

    if len(args.args) != 3:
        raise InvalidValue("usage: qlite policy eval SERVICE[+ARG] SOURCE TARGET")
    service_arg, source, target = args.args
    service, _, argument = service_arg.partition("+")
    ctx = _context(args)
    if source in ("dom0", "@adminvm"):
        result = {"action": "allow", "target": target, "choices": [], "user": None, "rule": None,
                  "reason": "calls from dom0 bypass policy"}
    else:
        qubes = _qubes(ctx)
        qubes.get(source)
        res, _policy = evaluate_call(ctx.paths, qubes, Request(service, argument, source, target))
        result = {"action": res.action, "target": res.target, "choices": list(res.choices), "user": res.user,
                  "rule": f"{res.rule.file}:{res.rule.line}" if res.rule else None, "reason": res.reason}
    if args.json:
        emit_json(result)
    else:
        print(result["action"] + (f" target={result['target']}" if result["target"] else ""))
        if result["choices"]:
            print(f"  choices: {', '.join(result['choices'])}")
        print(f"  {_with_rule(result['reason'], result['rule'])}")
    return 0


def _with_rule(reason: str, rule: str | None) -> str:
    """REASON, naming RULE once: most reasons already say where they come from."""
    return reason if not rule or rule in reason else f"{reason} [{rule}]"


def _policy_lint(args: argparse.Namespace) -> int:
    from qlite.rpc.broker import policy_dirs  # noqa: PLC0415
    from qlite.rpc.policy import lint, load_policy, unknown_qubes  # noqa: PLC0415

    ctx = _given(args)
    dirs = policy_dirs(ctx.paths)
    errors = lint(dirs)
    known = {q.name for q in _qubes(ctx).list()} | {t.name for t in _templates(ctx).list()}
    warnings = [] if errors else unknown_qubes(load_policy(dirs).rules, known)
    if args.json:
        emit_json({"errors": errors, "warnings": warnings})
    else:
        for e in errors:
            print(e)
        for w in warnings:
            print(f"warning: {w}")
        if not errors:
            print("policy OK" + (f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""))
    return 1 if errors else 0


def _policy_ask(args: argparse.Namespace) -> int:
    from qlite.host.daemonctl import DaemonControl  # noqa: PLC0415

    ctl = DaemonControl(_given(args).paths)
    if not args.args:
        asks = ctl.asks()
        if args.json:
            emit_json(asks)
        elif not asks:
            print("no pending questions")
        else:
            table(["ID", "SOURCE", "SERVICE", "ARGUMENT", "TARGET", "CHOICES", "DEFAULT", "SECONDS"],
                  [[a["id"], a["source"], a["service"], a["argument"], a["target"], ", ".join(a["choices"]),
                    a["default_target"], a["seconds_left"]] for a in asks])
        return 0
    words = args.args
    if len(words) not in (2, 3) or not words[0].isdecimal() or words[1] not in ("allow", "deny") \
            or (words[1] == "deny" and len(words) == 3):
        raise InvalidValue("usage: qlite policy ask [ID allow [TARGET] | ID deny]")
    reply = ctl.answer(int(words[0]), words[1] == "allow", words[2] if len(words) == 3 else None)
    if args.json:
        emit_json(reply)
    else:
        print(f"question {reply['id']}: " + (f"allowed to {reply['target']}" if reply["allow"] else "denied"))
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def device(args: argparse.Namespace) -> int:
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
        if args.json:
            emit_json([r.as_json() for r in rows])
            return 0
        table(["DEVICE", "SIZE", "IDENT", "LABEL", "ATTACHED TO", "ASSIGNED TO"], [
            [r.device.name, _size(r.device.size), r.device.ident, r.device.label or "-",
             (r.attached_to + (" (ro)" if r.read_only else "")) if r.attached_to else
             (f"host: {r.host_mounts[0]}" if r.host_mounts else "-"),
             ", ".join(r.assigned_to) or "-"] for r in rows])
        return 0
    if args.action == "attach":
        qube, dev = need(2, "QUBE DEVICE [--ro] [--exec]")
        d = dm.attach(qube, dev, read_only=args.ro, allow_exec=args.exec)
        info(f"{d.name} attached to {qube}" + (" read-only" if args.ro else ""))
        return 0
    if args.action == "detach":
        if len(rest) == 1:
            names = dm.detach(rest[0])
        else:
            qube, dev = need(2, "[QUBE] DEVICE")
            names = dm.detach(dev, qube=qube)
        info(f"detached {', '.join(names)}")
        return 0
    if args.action in ("assign", "pair"):
        qube, ident = need(2, "QUBE IDENT") if args.action == "assign" else (
            *need(1, "QUBE --fs-uuid U | --serial S"), "")
        if args.action == "pair":
            if bool(args.fs_uuid) == bool(args.serial):
                raise InvalidValue("usage: qlite device pair QUBE --fs-uuid U | --serial S")
            ident = f"uuid:{args.fs_uuid}" if args.fs_uuid else f"serial:{args.serial}"
        dm.assign(qube, ident, read_only=args.ro, required=args.required, paired=args.action == "pair")
        info(f"{ident} {'paired with' if args.action == 'pair' else 'assigned to'} {qube}")
        return 0
    if args.action == "unassign":
        qube, ident = need(2, "QUBE IDENT")
        dm.unassign(qube, ident)
        return 0
    if args.action == "eject":
        (dev,) = need(1, "DEVICE")
        qube = dm.eject(dev)
        info(f"{dev}: synced and detached{f' from {qube}' if qube else ''}; it is safe to remove")
        return 0
    raise InvalidValue(f"unknown device action {args.action!r}")


def log(args: argparse.Namespace) -> int:
    from qlite.rpc import audit  # noqa: PLC0415

    records = audit.read(_given(args).paths.rpc_log, args.lines)
    if args.json:
        emit_json(records)
        return 0
    import time  # noqa: PLC0415

    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("time", 0)))
        what = f"{r.get('service', '?')}" + (f"+{r['argument']}" if r.get("argument") else "")
        to = r.get("resolved") or r.get("target") or "?"
        extra = f" exit={r['exit']}" if "exit" in r else ""
        reason = r.get("reason") if r.get("decision") != "done" else ""
        why = _with_rule(reason, r.get("rule")) if reason else (f"[{r['rule']}]" if r.get("rule") else "")
        print(printable(f"{when} {r.get('source', '?')} -> {to} {what}: {r.get('decision', '?')}{extra}"
                        + (f" - {why}" if why else "")))
    return 0


# -- split GPG ------------------------------------------------------------------------


def splitgpg(args: argparse.Namespace) -> int:
    from qlite.gpg import splitgpg as sg  # noqa: PLC0415
    from qlite.gpg.vault import VaultGPG  # noqa: PLC0415

    ctx = _context(args)
    if args.action == "setup":
        result = sg.setup(ctx, _qubes(ctx), args.vault, args.client, args.autoaccept)
        if args.json:
            emit_json(result.as_json())
        else:
            info(f"{'created' if result.created else 'configured'} vault {result.vault} (offline); "
                 f"clients: {', '.join(result.clients) or 'none yet'}; policy in {result.policy_file}")
        return 0
    _qubes(ctx).get(args.vault)
    vault = VaultGPG(ctx, args.vault)
    if args.action == "gen-key":
        if not args.name or not args.email:
            raise InvalidValue("usage: qlite splitgpg gen-key VAULT --name NAME --email EMAIL")
        fingerprint = vault.generate(args.name, args.email)
        emit_json({"fingerprint": fingerprint}) if args.json else print(fingerprint)
    elif args.action == "import":
        if len(args.args) != 1:
            raise InvalidValue("usage: qlite splitgpg import VAULT FILE (or - for stdin)")
        try:
            data = sys.stdin.buffer.read() if args.args[0] == "-" else open(args.args[0], "rb").read()
        except OSError as exc:
            raise InvalidValue(f"cannot read {args.args[0]}: {exc.strerror}") from None
        imported = vault.import_keys(data)
        emit_json(imported) if args.json else print(f"imported {imported['count']} key(s) into {args.vault}")
    elif args.action == "list":
        keys = vault.list_keys(secret=args.secret)
        if args.json:
            emit_json([k.as_json() for k in keys])
        else:
            table(["FINGERPRINT", "UIDS", "ALGORITHM", "CREATED", "EXPIRES"],
                  [[k.fingerprint, "; ".join(k.uids), k.algorithms, (k.created_at or "")[:10],
                    (k.expires_at or "never")[:10]] for k in keys])
    else:
        if len(args.args) != 1:
            raise InvalidValue("usage: qlite splitgpg export VAULT KEY")
        sys.stdout.write(vault.export_public(args.args[0]))
    return 0
