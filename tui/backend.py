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

from qlite.aem.manager import AemManager, VerifyResult, boot_id
from qlite.aem.measure import ZERO, Measurement, extend
from qlite.core.qubes import QubeInfo, QubeManager
from qlite.core.reconcile import reap
from qlite.core.templates import TemplateManager
from qlite.core.usage import CpuSampler, Usage, qube_usage
from qlite.devices.manager import DeviceRow
from qlite.domain.context import Context
from qlite.domain.model import READ_ONLY
from qlite.engines.base import ContainerInfo
from qlite.net.firewall import Rule, parse_rule
from qlite.rpc import audit

ContextFactory = Callable[[], Context]
UsageSource = Callable[[Context, dict[str, ContainerInfo]], dict[str, Usage]]
Progress = Callable[[str], None]
DAEMON_LOG_LINES = 400
DEVICE_LOG_LINES = 200


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


@dataclass(frozen=True)
class Assignment:
    """A device assigned (or paired) to a qube; PRESENT names the device
    that matches it now, or is ''."""

    qube: str
    ident: str
    read_only: bool
    required: bool
    paired: bool
    present: str = ""


@dataclass(frozen=True)
class QubeChoice:
    """A qube a device may go to, for the device forms."""

    name: str
    label: str
    running: bool
    mode: str = "container"


@dataclass(frozen=True)
class DevicesView:
    """Everything the devices screen shows, read in one go."""

    devices: tuple[DeviceRow, ...]
    assignments: tuple[Assignment, ...]
    events: tuple[dict, ...]  # the device log (devices.jsonl), oldest first
    qubes: tuple[QubeChoice, ...]

    def device(self, name: str) -> DeviceRow | None:
        return next((r for r in self.devices if r.device.name == name), None)


@dataclass(frozen=True)
class Measured:
    """One measurement, and the chain after extending it (as a PCR would hold)."""

    name: str
    digest: str
    chain: str


@dataclass(frozen=True)
class AemStatus:
    measurements: tuple[Measured, ...]
    chain: str
    tpm: str | None  # the TCTI, or None: software chain only
    pcr: int | None
    sealed: str | None  # 'tpm', 'passphrase', or None: nothing sealed
    sealed_at: float | None
    enforced: bool
    confirmed: bool  # verified and confirmed in this boot


class Backend:
    """What the TUI asks of qlite's core. Methods block: call them from
    worker threads only."""

    def __init__(
        self,
        new_context: ContextFactory,
        usage: UsageSource | None = None,
        on_warning: Callable[[str], object] | None = None,
    ) -> None:
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
    def _qubes(ctx: Context) -> QubeManager:
        return QubeManager(ctx)

    @staticmethod
    def _aem(ctx: Context) -> AemManager:
        return AemManager(ctx, TemplateManager(ctx))

    @staticmethod
    def _templates(ctx: Context) -> TemplateManager:
        return TemplateManager(ctx)

    # -- the list ------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.session() as ctx:
            if not self._reaped:
                # As every CLI command does: disposables of dead qlite processes go.
                reap(ctx)
                self._reaped = True
            qm = self._qubes(ctx)
            containers = qm.containers()
            usage = self._usage(ctx, containers)
            rows = [QubeRow(**vars(i), usage=usage.get(i.name)) for i in qm.infos(containers)]
            prefs = qm.prefs.all()
            return Snapshot(
                rows=tuple(rows),
                default_template=prefs["default_template"],
                default_dispvm=prefs["default_dispvm"],
                default_netvm=prefs["default_netvm"],
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

    def create(
        self,
        name: str,
        *,
        label: str,
        template: str | None,
        netvm: str | None,
        memory: int | None,
        vcpus: int | None = None,
        mode: str = "container",
        provides_network: bool = False,
    ) -> None:
        props = {"mode": mode} if mode != "container" else {}
        if provides_network:
            props["provides_network"] = "True"
        with self.session() as ctx:
            self._qubes(ctx).create(
                name, label=label, template=template, netvm=netvm, memory=memory, vcpus=vcpus, props=props
            )

    def clone(self, source: str, name: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).clone(source, name)

    # -- prefs ---------------------------------------------------------------

    def prefs(self, name: str) -> list[Pref]:
        with self.session() as ctx:
            values = self._qubes(ctx).get_prefs(name)
        return [Pref(prop, value, is_default, prop in READ_ONLY) for prop, (value, is_default) in values.items()]

    def features_and_tags(self, name: str) -> tuple[dict[str, str], list[str]]:
        with self.session() as ctx:
            qm = self._qubes(ctx)
            return qm.features.all(name), qm.tags(name)

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
                    Revision(r.rev, r.origin, r.image_id, r.created_at, r.rev == t.current_rev) for r in t.revisions
                )
                out.append(TemplateRow(t.name, t.current_rev, info.image_id, info.origin, tuple(info.users), revisions))
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

    # -- devices -------------------------------------------------------------

    def devices(self) -> DevicesView:
        with self.session() as ctx:
            qm = self._qubes(ctx)
            dm = qm.devices
            rows = dm.list()
            assignments = []
            for q in qm.list():
                for a in dm.assignments(q.name):
                    present = next((r.device.name for r in rows if r.device.matches(a["ident"])), "")
                    assignments.append(
                        Assignment(
                            q.name, a["ident"], bool(a["read_only"]), bool(a["required"]), bool(a["paired"]), present
                        )
                    )
            qubes = tuple(
                QubeChoice(i.name, i.label, i.state == "Running", i.mode) for i in qm.infos() if i.klass != "TemplateVM"
            )
            # devices.jsonl is JSON lines, as the RPC audit log is: one reader for both.
            events = tuple(audit.read(ctx.paths.device_log, DEVICE_LOG_LINES))
            return DevicesView(tuple(rows), tuple(assignments), events, qubes)

    def attach_device(self, qube: str, device: str, read_only: bool) -> str:
        with self.session() as ctx:
            return self._qubes(ctx).devices.attach(qube, device, read_only=read_only).name

    def detach_device(self, device: str) -> list[str]:
        with self.session() as ctx:
            return self._qubes(ctx).devices.detach(device)

    def assign_device(self, qube: str, ident: str, *, read_only: bool, required: bool, paired: bool) -> None:
        with self.session() as ctx:
            self._qubes(ctx).devices.assign(qube, ident, read_only=read_only, required=required, paired=paired)

    def unassign_device(self, qube: str, ident: str) -> None:
        with self.session() as ctx:
            self._qubes(ctx).devices.unassign(qube, ident)

    def eject_device(self, device: str) -> str | None:
        with self.session() as ctx:
            return self._qubes(ctx).devices.eject(device)

    # -- anti-evil-maid ------------------------------------------------------

    def aem_status(self) -> AemStatus:
        with self.session() as ctx:
            am = self._aem(ctx)
            log = am.log()
            try:
                confirmed = am.stamp.read_text().strip() == boot_id()
            except OSError:
                confirmed = False
        pcr, rows = ZERO, []
        for m in log["measurements"]:
            pcr = extend(pcr, Measurement(m["name"], m["digest"]).event)
            rows.append(Measured(m["name"], m["digest"], pcr.hex()))
        return AemStatus(
            tuple(rows),
            log["chain"],
            log["tpm"],
            log["pcr"],
            log["sealed"],
            log["sealed_at"],
            log["enforced"],
            confirmed,
        )

    def aem_verify(self, passphrase: bytes | None) -> VerifyResult:
        with self.session() as ctx:
            return self._aem(ctx).verify(passphrase)

    def aem_confirm(self) -> None:
        with self.session() as ctx:
            self._aem(ctx).confirm()

    def aem_reseal(self, passphrase: bytes | None) -> str:
        with self.session() as ctx:
            return self._aem(ctx).reseal(passphrase)

    def aem_set_enforced(self, on: bool) -> None:
        with self.session() as ctx:
            self._aem(ctx).set_enforced(on)
