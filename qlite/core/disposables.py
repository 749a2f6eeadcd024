"""Disposable qubes: made for one command, destroyed when it ends.

Order matters for crash safety. The store row (with the owner process) is
written before any engine object exists, and removed only after every
engine object is gone. So if qlite is killed at any point, the row tells
the next qlite command what to reap; see ``reconcile``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator

from qlite.agent import client as agent_client
from qlite.core.qubes import QubeManager
from qlite.domain import preload
from qlite.domain.context import Context
from qlite.domain.model import MODES, Qube, parse_choice, parse_mode
from qlite.domain.runcommand import shimmed
from qlite.domain.spec import AGENT_COMMAND, exec_place
from qlite.engines.base import Stdio
from qlite.errors import InvalidValue, NotFound, QliteError, QubeNotFound
from qlite.state.owners import current_owner

MAX_DISPID = 9999
NAME_ATTEMPTS = 50


class DisposableManager:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.qubes = QubeManager(ctx)

    def resolve_source(self, dvm: str | None, template: str | None) -> tuple[Qube | None, str]:
        """The disposable template (or None) and the template image's name."""
        if dvm and template:
            raise InvalidValue("give either --dvm or --template, not both")
        if template:
            self.qubes.check_template(template)
            return None, template
        name = dvm or self.qubes.resolved_default_dispvm(None)
        if not name:
            raise InvalidValue("no disposable template: set 'qlite prefs --global default_dispvm'")
        try:
            source = self.qubes.get(name)
        except NotFound:
            raise QubeNotFound(f"no such disposable template: {name!r}") from None
        if not source.template_for_dispvms:
            raise InvalidValue(f"{name!r} is not a disposable template (template_for_dispvms is False)")
        return source, source.template or ""

    def create(self, dvm: str | None = None, template: str | None = None, mode: str | None = None) -> Qube:
        """Record a new dispNNNN inheriting from its disposable template
        (and its mode, unless MODE says otherwise)."""
        source, template_name = self.resolve_source(dvm, template)
        if mode is not None:
            parse_choice("--mode", mode, MODES)
            if source is not None:
                self.qubes.runtime_of_mode(mode).check_private(source)  # its disposables start from a copy
        owner = current_owner()
        for _ in range(NAME_ATTEMPTS):
            dispid = random.randint(1, MAX_DISPID)
            if source is not None:
                q = source.derive()
                q.template = source.name
                q.template_for_dispvms = False
                q.autostart = False
            else:
                q = Qube(name="", klass="DispVM", label="red", template=template_name)
            q.name, q.klass, q.owner, q.created_at = f"disp{dispid}", "DispVM", owner, self.ctx.clock.time()
            q.default_dispvm_raw = source.name if source else None
            q.mode = parse_mode(mode) if mode else q.mode
            try:
                qstore = self.ctx.qube_store
                with qstore.transaction():
                    if qstore.is_template(q.name):
                        continue
                    qstore.insert(q)
                    if source is not None:
                        qstore.copy_settings(source.name, q.name)
            except sqlite3.IntegrityError:
                continue  # that dispid is taken; draw another
            return q
        raise QliteError("could not find a free disposable name; remove some disposables")

    def _private_from_source(self, q: Qube) -> None:
        """Q's private volume: a copy of its disposable template's."""
        source = self.qubes.get(q.template) if q.template and self.qubes.exists(q.template) else None
        self.qubes.create_private(q, copy_from=source)

    def prepare(self, q: Qube, argv: list[str], user: str, stdio: Stdio, env: dict[str, str] | None = None) -> str:
        """Create container disposable Q's volume, network and container,
        with ARGV as its command; the container id."""
        self._private_from_source(q)
        return self.qubes.container.create(q, self.qubes.image_for(q), tuple(argv), user, env, stdio)

    def run(
        self,
        argv: list[str],
        stdio: Stdio,
        dvm: str | None = None,
        template: str | None = None,
        user: str | None = None,
        env: dict[str, str] | None = None,
        on_created: Callable[[Qube], None] | None = None,
        mode: str | None = None,
    ) -> int:
        """Run ARGV in a new disposable and destroy it afterwards, whatever
        happens: success, failure, Ctrl-C or SIGTERM. Signals are only
        handled from the main thread (the broker runs calls in others)."""
        if not argv:
            raise InvalidValue("no command given")
        argv = shimmed(argv)
        self.qubes.aem_check("a disposable")
        claimed = self._claim(dvm, template, mode)
        if claimed is not None:
            return self._run_preloaded(*claimed, argv, stdio, user, env, on_created)
        q = self.create(dvm, template, mode)
        main = threading.current_thread() is threading.main_thread()
        with _terminate_on_signals() if main else contextlib.nullcontext():
            try:
                self._private_from_source(q)
                return self.qubes.runtime(q).run_disposable(
                    q, argv, stdio, user or q.default_user, env or {}, on_created
                )
            finally:
                with _signals_blocked() if main else contextlib.nullcontext():
                    self.qubes.destroy(q)

    # -- preloaded disposables (see qlite.domain.preload) --------------------------------

    def _preload_dvm(self, dvm: str | None, template: str | None, mode: str | None) -> str | None:
        if template or (mode is not None and not self.qubes.runtime_of_mode(mode).preloadable):
            return None
        name = dvm or self.qubes.resolved_default_dispvm(None)
        return name or None

    def _claim(self, dvm: str | None, template: str | None, mode: str | None) -> tuple[str, str] | None:
        name = self._preload_dvm(dvm, template, mode)
        return preload.claim(self.ctx, name) if name else None

    def _run_preloaded(
        self,
        name: str,
        daemon_owner: str,
        argv: list[str],
        stdio: Stdio,
        user: str | None,
        env: dict[str, str] | None,
        on_created: Callable[[Qube], None] | None,
    ) -> int:
        """Run ARGV in the claimed member NAME through its agent; give it back
        to the daemon (which destroys it) whatever happens."""
        q = self.qubes.get(name)
        main = threading.current_thread() is threading.main_thread()
        with _terminate_on_signals() if main else contextlib.nullcontext():
            try:
                if on_created is not None:
                    on_created(q)
                user = user or q.default_user
                conn = agent_client.connect(self.ctx.paths.agent_client_sock(q.name), q.name)
                workdir, place = exec_place(user)
                return agent_client.exec_over(
                    conn, q.name, argv, stdio, user, workdir, {"QLITE_QUBE": q.name, **place, **(env or {})}
                )
            finally:
                with _signals_blocked() if main else contextlib.nullcontext():
                    if not preload.hand_back(self.ctx, name, daemon_owner):
                        self.qubes.destroy(q)

    def preload(self, dvm: str, generation: str) -> str:
        """Create and start one ready member of DVM (in the daemon): ready
        once a command has run through its agent."""
        q = self.create(dvm)
        try:
            self.qubes.features.set(q.name, preload.GENERATION, generation)
            cid = self.prepare(q, list(AGENT_COMMAND), "root", Stdio(stdin=None))
            self.ctx.engine.start(cid)
            self.qubes.rpc_ready(q, start_daemon=False)  # the broker links its agent
            with open(os.devnull, "r+b") as null:
                conn = agent_client.connect(self.ctx.paths.agent_client_sock(q.name), q.name)
                code = agent_client.exec_over(conn, q.name, ["true"], Stdio(null, null, null), "root", "/", {})
            if code != 0:
                raise QliteError(f"the agent of preloaded {q.name} cannot run a command (exit {code})")
            self.qubes.add_tags(q.name, [preload.READY])
        except BaseException:
            self.qubes.destroy(q)
            raise
        return q.name


class Terminated(BaseException):
    """Raised in the main thread when qlite gets SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminate_on_signals() -> Iterator[None]:
    def handler(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Cleanup must not be cut short by a second Ctrl-C or SIGTERM."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, Terminated):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return 125
