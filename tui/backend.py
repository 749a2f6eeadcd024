"""The TUI's one door to qlite's core.

Every call runs in a worker thread, and each call gets a Context of its own
(as the daemon's broker does): a Context's SQLite connection and engine
client are not shared between threads. Nothing here touches Textual, so the
screens stay free of core details and the door is easy to fake.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from qlite.core.context import Context
from qlite.core.qubes import QubeInfo
from qlite.core.usage import CpuSampler, Usage, qube_usage
from qlite.engines.base import ContainerInfo
from qlite.net.firewall import Rule, parse_rule
from qlite.rpc import audit

ContextFactory = Callable[[], Context]
UsageSource = Callable[[Context, dict[str, ContainerInfo]], dict[str, Usage]]
Progress = Callable[[str], None]
DAEMON_LOG_LINES = 400


@dataclass
class QubeRow(QubeInfo):
    """One line of the qube list: ``qlite ls`` plus what the qube costs."""

    usage: Usage | None = None

    @property
    def is_template(self) -> bool:
        return self.klass == "TemplateVM"


@dataclass(frozen=True)
class Snapshot:
    """Everything the qube list shows, read in one go."""

    rows: tuple[QubeRow, ...]
    default_template: str = ""
    default_dispvm: str = ""
    default_netvm: str = ""

    def row(self, name: str) -> QubeRow | None:
        return next((r for r in self.rows if r.name == name), None)

    @property
    def templates(self) -> list[str]:
        return [r.name for r in self.rows if r.is_template and r.revision is not None]

    @property
    def gateways(self) -> list[str]:
        return [r.name for r in self.rows if r.provides_network and not r.is_template]

    @property
    def dispvm_templates(self) -> list[str]:
        return [r.name for r in self.rows if r.template_for_dispvms]


@dataclass(frozen=True)
class Revision:
    rev: int
    origin: str
    image_id: str
    created_at: float
    current: bool


@dataclass(frozen=True)
class TemplateRow:
    name: str
    current_rev: int | None
    image_id: str
    origin: str
    users: tuple[str, ...]
    revisions: tuple[Revision, ...] = field(default=())
    built: bool = True


@dataclass(frozen=True)
class Pref:
    name: str
    value: str
    is_default: bool
    read_only: bool


class Backend:
    """What the TUI asks of qlite's core. Methods block: call them from
    worker threads only."""

    def __init__(self, new_context: ContextFactory, usage: UsageSource | None = None,
                 on_warning: Callable[[str], None] | None = None):
        self._new_context = new_context
        self._sampler = CpuSampler()
        self._usage = usage or (lambda ctx, containers: qube_usage(ctx, self._sampler, containers))
        self.on_warning = on_warning
        self._reaped = False

    @contextlib.contextmanager
    def session(self) -> Iterator[Context]:
        """A Context for one call; its store is closed afterwards."""
        ctx = self._new_context()
        if self.on_warning is not None:
            ctx.on_warning = self.on_warning
        try:
            yield ctx
        finally:
            store = ctx.__dict__.get("store")
            if store is not None:
                store.close()

    @staticmethod
    def _qubes(ctx: Context):
        from qlite.core.qubes import QubeManager  # noqa: PLC0415

        return QubeManager(ctx)

    @staticmethod
    def _templates(ctx: Context):
        from qlite.core.templates import TemplateManager  # noqa: PLC0415

        return TemplateManager(ctx)

    # -- the list ------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.session() as ctx:
            if not self._reaped:
                # As every CLI command does: disposables of dead qlite processes go.
                from qlite.core.reconcile import reap  # noqa: PLC0415

                reap(ctx)
                self._reaped = True
            qm = self._qubes(ctx)
            containers = qm.containers()
            usage = self._usage(ctx, containers)
            rows = [QubeRow(**vars(i), usage=usage.get(i.name)) for i in qm.infos(containers)]
            prefs = qm.prefs.all()
            return Snapshot(
                rows=tuple(rows), default_template=prefs["default_template"],
                default_dispvm=prefs["default_dispvm"], default_netvm=prefs["default_netvm"],
            )

    # -- lifecycle -----------------------------------------------------------

    def start(self, name: str, skip_if_running: bool = False) -> None:
        with self.session() as ctx:
            self._qubes(ctx).start(name, skip_if_running=skip_if_running)

    def shutdown(self, name: str) -> bool:
        with self.session() as ctx:
            return self._qubes(ctx).shutdown(name)

    def kill(self, name: str) -> bool:
        with self.session() as ctx:
            return self._qubes(ctx).kill(name)

    def pause(self, name: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).pause(name)

    def unpause(self, name: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).unpause(name)

    def remove(self, name: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).remove(name)

    def create(self, name: str, *, label: str, template: str | None, netvm: str | None,
               memory: int | None) -> None:
        with self.session() as ctx:
            self._qubes(ctx).create(name, label=label, template=template, netvm=netvm, memory=memory)

    def clone(self, source: str, name: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).clone(source, name)

    # -- prefs ---------------------------------------------------------------

    def prefs(self, name: str) -> list[Pref]:
        from qlite.core.model import READ_ONLY  # noqa: PLC0415

        with self.session() as ctx:
            values = self._qubes(ctx).get_prefs(name)
        return [Pref(prop, value, is_default, prop in READ_ONLY) for prop, (value, is_default) in values.items()]

    def set_pref(self, name: str, prop: str, value: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).set_pref(name, prop, value)

    def reset_pref(self, name: str, prop: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).reset_pref(name, prop)

    # -- firewall ------------------------------------------------------------

    def rules(self, name: str) -> tuple[Rule, ...]:
        with self.session() as ctx:
            qm = self._qubes(ctx)
            qm.get(name)
            return qm.net.live_rules(name)

    def add_rule(self, name: str, text: str, before: int | None = None) -> tuple[Rule, ...]:
        """Parse TEXT (Qubes' rule words, as ``qlite firewall add`` takes
        them) and insert the rule before rule BEFORE, or at the end."""
        rule = parse_rule(text.split(), time.time())
        with self.session() as ctx:
            return self._qubes(ctx).net.add_rule(name, rule, before)

    def delete_rule(self, name: str, number: int) -> tuple[Rule, ...]:
        with self.session() as ctx:
            return self._qubes(ctx).net.delete_rule(name, number)

    def reset_rules(self, name: str) -> tuple[Rule, ...]:
        with self.session() as ctx:
            qm = self._qubes(ctx)
            qm.get(name)
            return qm.net.reset_rules(name)

    # -- templates -----------------------------------------------------------

    def templates(self) -> list[TemplateRow]:
        with self.session() as ctx:
            tm = self._templates(ctx)
            out = []
            for t in tm.list():
                info = tm.info(t)
                revisions = tuple(
                    Revision(r.rev, r.origin, r.image_id, r.created_at, r.rev == t.current_rev)
                    for r in t.revisions
                )
                out.append(TemplateRow(t.name, t.current_rev, info.image_id, info.origin, tuple(info.users),
                                       revisions))
            built = {r.name for r in out}
            out += [TemplateRow(n, None, "", "", (), (), built=False) for n in tm.available() if n not in built]
            return out

    def build_template(self, name: str, progress: Progress) -> int:
        with self.session() as ctx:
            revision, _new = self._templates(ctx).build(name, progress)
            return revision.rev

    def update_template(self, name: str, progress: Progress) -> int:
        with self.session() as ctx:
            return self._templates(ctx).update(name, progress).rev

    def revert_template(self, name: str) -> int:
        with self.session() as ctx:
            return self._templates(ctx).revert(name).rev

    # -- logs ----------------------------------------------------------------

    def rpc_log(self, last: int = 200) -> list[dict]:
        with self.session() as ctx:
            return audit.read(ctx.paths.rpc_log, last)

    def daemon_log(self, last: int = DAEMON_LOG_LINES) -> list[str]:
        with self.session() as ctx:
            path = ctx.paths.daemon_log
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n") for line in f.readlines()[-last:]]
        except FileNotFoundError:
            return []
