"""The qube manager: create, start, run, shut down, clone and remove qubes.

The store says what qubes *should* be; the engine says what runs. A qube's
container exists only while it runs: start creates it from the template's
current revision (so an updated template takes effect at the next start)
and shutdown removes it (so /tmp, /run, /var/tmp and /var/log are gone).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from qlite.core.runtimes import ContainerRuntime
from qlite.domain.context import Context
from qlite.domain.labels import validate_label
from qlite.domain.model import (
    CLASSES,
    DEFAULT_MEMORY_MIB,
    DEFAULT_VCPUS,
    HOST_UPLINK,
    PROPERTIES,
    Qube,
    State,
    format_value,
    next_start_note,
    parse_int,
    parse_mode,
    parse_property,
)
from qlite.domain.names import validate_name
from qlite.domain.ports import QubeRuntime, exec_env
from qlite.domain.prefs import GlobalPrefs
from qlite.domain.runcommand import shimmed
from qlite.domain.spec import (
    container_name,
    engine_labels,
    volume_name,
)
from qlite.engines.base import ContainerInfo, Stdio
from qlite.errors import (
    AlreadyExists,
    Busy,
    InUse,
    InvalidValue,
    NotFound,
    NotHalted,
    NotPaused,
    NotRunning,
    QliteError,
    QubeNotFound,
    StateError,
)
from qlite.gpg.policyfile import forget_qube
from qlite.state.owners import current_owner

if TYPE_CHECKING:  # the rooms load when a qube first needs them (they import this module)
    from qlite.core.templates import TemplateManager
    from qlite.devices.manager import DeviceManager
    from qlite.net.manager import NetPlan, NetworkManager
    from qlite.vm.runner import VmRunner

DEFAULT_SHUTDOWN_TIMEOUT = 60.0
TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class QubeInfo:
    """One row of ``qlite ls``: Qubes property names, resolved values."""

    name: str
    klass: str
    state: str
    label: str
    template: str | None
    netvm: str | None
    mode: str
    netpath: str
    memory: int | None
    vcpus: int | None
    template_for_dispvms: bool
    provides_network: bool
    tags: list[str]
    revision: int | None = None  # templates: the current revision

    def as_json(self) -> dict:
        # Qubes calls the property "class", a word Python keeps for itself.
        return {("class" if k == "klass" else k): v for k, v in asdict(self).items()}


class QubeManager:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.qstore = ctx.qube_store
        self.prefs = GlobalPrefs(ctx.store)
        self.features = self.qstore.features

    @cached_property
    def net(self) -> NetworkManager:
        from qlite.net.manager import NetworkManager  # noqa: PLC0415 - ~7 ms; ls does not need the network room

        return NetworkManager(self.ctx, self)

    @cached_property
    def devices(self) -> DeviceManager:
        from qlite.devices.manager import DeviceManager  # noqa: PLC0415 - ~4 ms; ls does not need the devices room

        return DeviceManager(self.ctx, self)

    @cached_property
    def vm(self) -> VmRunner:  # the runtime of VM qubes
        from qlite.vm.runner import VmRunner  # noqa: PLC0415 - ~12 ms; only VM qubes need it

        return VmRunner(self.ctx, self)

    @cached_property
    def templates(self) -> TemplateManager:
        from qlite.core.templates import TemplateManager  # noqa: PLC0415 - ~8 ms; features, tags, prefs do without

        return TemplateManager(self.ctx)

    @cached_property
    def container(self) -> ContainerRuntime:
        return ContainerRuntime(self)

    def runtime(self, q: Qube) -> QubeRuntime:
        return self.runtime_of_mode(q.mode)

    def runtime_of_mode(self, mode: str) -> QubeRuntime:
        """The runtime of MODE: the one place that asks which mode it is."""
        return self.vm if mode == "vm" else self.container

    # -- store -------------------------------------------------------------

    def get(self, name: str) -> Qube:
        q = self.qstore.find(name)
        if q is None:
            if self.qstore.is_template(name):
                raise InvalidValue(f"{name!r} is a template; use 'qlite template' for it")
            raise QubeNotFound(f"no such qube: {name!r}")
        return q

    def exists(self, name: str) -> bool:
        return self.qstore.exists(name)

    # -- resolution ----------------------------------------------------------

    def resolved_netvm(self, q: Qube) -> str | None:
        """The qube's network provider, or None for no network."""
        raw = self.prefs.get("default_netvm") if q.netvm_raw is None else q.netvm_raw
        return raw or None

    def resolved_default_dispvm(self, q: Qube | None) -> str | None:
        raw = None if q is None else q.default_dispvm_raw
        if raw is None:
            raw = self.prefs.get("default_dispvm")
        return raw or None

    def netpath(self, q: Qube) -> str:
        if self.resolved_netvm(q) is None:
            return "none"
        probe = self.ctx.runtime_probe
        return probe.netpath if probe else "host-netns"

    def check_netvm(self, value: str, for_qube: str | None = None) -> str:
        """Validate a netvm value ('' for none); return it."""
        if value in ("", HOST_UPLINK):
            return value
        if value == for_qube:
            raise InvalidValue("a qube cannot be its own netvm")
        if not self.exists(value):
            raise QubeNotFound(f"no such qube for netvm: {value!r}")
        gateway = self.get(value)
        if not gateway.provides_network:
            raise InvalidValue(f"netvm {value!r} does not provide network: set its provides_network to True")
        if gateway.is_disposable:
            raise InvalidValue("a disposable cannot be a netvm")
        if for_qube:
            self.netvm_chain(Qube(name=for_qube, klass="AppVM", label="red", template=None, netvm_raw=value))
        return value

    def check_default_netvm(self, value: str) -> str:
        """Validate a new global default_netvm: no gateway that follows the
        default may end up routing through itself."""
        self.check_netvm(value)
        for q in self.list():
            if q.provides_network:
                self.netvm_chain(q, default_netvm=value)
        return value

    def netvm_chain(self, q: Qube, default_netvm: str | None = None) -> list[str]:
        """The gateway qubes between Q and the host, nearest first; a loop
        (direct, through a chain, or through the global default) is refused
        with the way out."""
        default = self.prefs.get("default_netvm") if default_netvm is None else default_netvm
        path, hop = [q.name], q
        while True:  # bounded: every hop is a distinct qube, or the loop is reported
            raw = default if hop.netvm_raw is None else hop.netvm_raw
            if raw in ("", HOST_UPLINK) or not self.exists(raw):
                return path[1:]
            if raw in path:
                via = [
                    n
                    for n in dict.fromkeys(path)
                    if n == q.name and q.netvm_raw is None or n != q.name and self._follows_default(n)
                ]
                how = f" ({', '.join(via)}: following the global default_netvm)" if via else ""
                raise InvalidValue(
                    f"network loop: {' -> '.join((*path, raw))}{how}; give one of them a netvm "
                    f"of its own, e.g. 'qlite prefs {raw} netvm dom0'"
                )
            path.append(raw)
            hop = self.get(raw)

    def _follows_default(self, name: str) -> bool:
        return self.exists(name) and self.get(name).netvm_raw is None

    def check_template(self, name: str) -> str:
        self.templates.current_image(name)
        return name

    def check_dispvm(self, name: str) -> str:
        if name == "":
            return name
        q = self.get(name)
        if not q.template_for_dispvms:
            raise InvalidValue(f"{name!r} is not a disposable template: set its template_for_dispvms to True")
        return name

    # -- state ---------------------------------------------------------------

    def containers(self) -> dict[str, ContainerInfo]:
        """This home's qube containers, by qube name."""
        found = self.ctx.engine.list_containers({"qlite.home": self.ctx.home_hash})
        return {c.labels.get("qlite.qube", ""): c for c in found if c.labels.get("qlite.kind") in ("app", "disp")}

    def state_of(self, q: Qube, containers: dict[str, ContainerInfo] | None = None) -> State:
        if containers is None:
            info = self.ctx.engine.inspect_container(container_name(self.ctx.home_hash, q.name))
        else:
            info = containers.get(q.name)
        return self.runtime(q).state(q, info)

    def info(self, q: Qube, containers: dict[str, ContainerInfo]) -> QubeInfo:
        return QubeInfo(
            name=q.name,
            klass=q.klass,
            state=self.state_of(q, containers).value,
            label=q.label,
            template=q.template,
            netvm=self.resolved_netvm(q),
            mode=q.mode,
            netpath=self.netpath(q),
            memory=q.memory,
            vcpus=q.vcpus,
            template_for_dispvms=q.template_for_dispvms,
            provides_network=q.provides_network,
            tags=sorted(q.tags),
        )

    def infos(self, containers: dict[str, ContainerInfo] | None = None) -> list[QubeInfo]:
        """Every qube and template, templates first: what ``qlite ls`` and
        the TUI list show."""
        containers = self.containers() if containers is None else containers
        rows = [self.info(q, containers) for q in self.list()]
        rows += [
            QubeInfo(
                name=t.name,
                klass="TemplateVM",
                state=State.HALTED.value,
                label="black",
                template=None,
                netvm=None,
                mode="container",
                netpath="none",
                memory=None,
                vcpus=None,
                template_for_dispvms=False,
                provides_network=False,
                tags=[],
                revision=t.current_rev,
            )
            for t in self.templates.list()
        ]
        rows.sort(key=lambda r: (r.klass != "TemplateVM", r.name))
        return rows

    # -- create, clone, remove -------------------------------------------------

    def create(
        self,
        name: str,
        *,
        label: str,
        template: str | None = None,
        klass: str = "AppVM",
        netvm: str | None = None,
        memory: int | None = None,
        vcpus: int | None = None,
        props: dict[str, str] | None = None,
    ) -> Qube:
        """Create an AppVM. Everything is validated before anything changes."""
        validate_name(name)
        if self.exists(name) or self.qstore.is_template(name):
            raise AlreadyExists(f"a qube named {name!r} already exists")
        if klass not in CLASSES:
            raise InvalidValue(f"unknown class {klass!r}: expected one of {', '.join(CLASSES)}")
        if klass != "AppVM":
            hint = {
                "TemplateVM": "templates are built with 'qlite template build'",
                "DispVM": "disposables are made by 'qlite run --disposable'",
                "StandaloneVM": "standalone qubes are not available in this version",
            }[klass]
            raise InvalidValue(f"cannot create a {klass} here: {hint}")
        template = template or self.prefs.get("default_template")
        if not template:
            raise InvalidValue("no template given and no default_template set: use --template")
        self.check_template(template)
        q = Qube(
            name=name,
            klass=klass,
            label=validate_label(label),
            template=template,
            memory=memory if memory is not None else DEFAULT_MEMORY_MIB,
            vcpus=vcpus if vcpus is not None else DEFAULT_VCPUS,
            created_at=self.ctx.clock.time(),
        )
        parse_int("memory", str(q.memory), 32, 1 << 22)
        parse_int("vcpus", str(q.vcpus), 1, 256)
        if netvm is not None and netvm != "default":
            q.netvm_raw = self.check_netvm("" if netvm == "none" else netvm, name)
        for prop, text in (props or {}).items():
            self._apply_prop(q, prop, text)
        q.pending = current_owner()
        self.qstore.insert(q)
        self._finish_creating(q)
        return q

    def _finish_creating(self, q: Qube, copy_from: Qube | None = None) -> None:
        """Make Q's private volume, then clear the row's pending mark. If
        this process is killed before that, reconcile rolls the qube back."""
        try:
            self.create_private(q, copy_from)
        except BaseException:
            self.qstore.delete(q.name)
            raise
        self.qstore.set_column(q.name, "pending", None)
        q.pending = None

    def private_mountpoint(self, q: Qube) -> str:
        """Where Q's private volume is on the host, made if it is missing."""
        vol = self.ctx.engine.inspect_volume(volume_name(self.ctx.home_hash, q.name))
        return vol.mountpoint if vol is not None else self.create_private(q)

    def create_private(self, q: Qube, copy_from: Qube | None = None) -> str:
        """Make Q's private volume (a copy of COPY_FROM's); its mountpoint."""
        engine = self.ctx.engine
        vol = engine.create_volume(
            volume_name(self.ctx.home_hash, q.name),
            engine_labels(self.ctx.home_hash, q.name, "private", q.owner),
        )
        try:
            if copy_from is not None:
                src = engine.inspect_volume(volume_name(self.ctx.home_hash, copy_from.name))
                if src is not None:
                    self.ctx.private_volumes.copy(src.mountpoint, vol.mountpoint)
            self.ctx.private_volumes.init(vol.mountpoint)
        except BaseException:
            engine.remove_volume(vol.name)
            raise
        return vol.mountpoint

    def clone(self, src: str, dst: str) -> Qube:
        source = self.get(src)
        validate_name(dst)
        if self.exists(dst) or self.qstore.is_template(dst):
            raise AlreadyExists(f"a qube named {dst!r} already exists")
        if source.is_disposable:
            raise InvalidValue("disposables cannot be cloned")
        q = source.derive(name=dst, created_at=self.ctx.clock.time(), pending=current_owner())
        with self.qstore.transaction():
            self.qstore.insert(q)
            self.qstore.copy_settings(src, dst)
        self._finish_creating(q, copy_from=source)
        return q

    def remove(self, name: str) -> None:
        q = self.get(name)
        state = self.state_of(q)
        if state != State.HALTED:
            raise NotHalted(f"qube {name!r} is {state.value.lower()}: shut it down first")
        users = self._dependants(name)
        if users:
            raise InUse(f"qube {name!r} is still used by: {', '.join(users)}")
        # From here the removal is committed: if this process is killed
        # part-way, reconcile completes it.
        self.qstore.set_column(name, "pending", current_owner())
        self.destroy(q)

    def _dependants(self, name: str) -> list[str]:
        out = []
        for other in self.list():
            if other.name == name:
                continue
            if other.default_dispvm_raw == name or other.netvm_raw == name:
                out.append(other.name)
            elif other.is_disposable and other.template == name:
                out.append(other.name)
        for key in ("default_dispvm", "default_netvm"):
            if self.prefs.get(key) == name:
                out.append(f"global {key}")
        return out

    def destroy(self, q: Qube) -> None:
        """Remove every engine object of Q, then its row. Engine objects go
        first so that a crash part-way leaves a row that says what to reap."""
        engine, hh = self.ctx.engine, self.ctx.home_hash
        networked = self.resolved_netvm(q) is not None
        gateway = self.net.gateway_of(q)
        self.runtime(q).kill(q)
        self.devices.release_qube(q.name)
        self.net.drop_network(q)
        engine.remove_volume(volume_name(hh, q.name))
        shutil.rmtree(self.ctx.paths.rpc_dir(q.name), ignore_errors=True)
        self.qstore.delete(q.name)
        if not q.is_disposable:
            self._forget(q)
        if not networked:
            return
        try:
            self.net.reload(gateway)
        except QliteError as exc:
            self.ctx.warn(f"firewall rules could not be reloaded after removing {q.name}: {exc}")

    def _forget(self, q: Qube) -> None:
        """Whatever was granted to Q goes with it: the policy lines qlite
        manages, and the broker's remembered approvals (keyed by uuid)."""
        try:
            forget_qube(self.ctx.paths, self.qstore, q.name)
        except OSError as exc:
            self.ctx.warn(f"the managed policy could not be rewritten after removing {q.name}: {exc}")
        try:
            self.ctx.daemon.forget(q.uuid)
        except QliteError:
            pass  # no daemon: nothing remembered

    # -- lifecycle -------------------------------------------------------------

    def start(self, name: str, skip_if_running: bool = False) -> Qube:
        q = self.get(name)
        if q.is_disposable:
            raise StateError(f"{name!r} is a disposable; it runs only for its one command")
        if q.pending:
            raise Busy(f"qube {name!r} is being created or removed by another qlite command")
        info = self.ctx.engine.inspect_container(container_name(self.ctx.home_hash, name))
        state = self.state_of(q, {name: info} if info is not None else {})
        if state == State.RUNNING:
            if skip_if_running:
                return q
            raise NotHalted(f"qube {name!r} is already running")
        if state == State.PAUSED:
            self.unpause(name)
            return q
        self.aem_check(name)
        self.devices.check_required(name)
        self.runtime(q).start(q, stale=info)
        try:
            self.devices.attach_assigned(name)
        except QliteError:
            self.kill(name)  # a required device could not be attached
            raise
        return q

    def devices_source(self, q: Qube) -> str:
        """The host directory bound at /mnt/removable in Q's container, made
        ready for mounts to propagate into it. The Docker API cannot give a
        bind mount nodev/nosuid/noexec, so under it qubes get no devices."""
        if not self.ctx.engine.gives_devices_to_containers:
            return ""
        return str(self.devices.prepare_dir(q.name))

    def aem_check(self, name: str) -> None:
        """With anti-evil-maid enforced, nothing starts before this boot's
        measurements were verified and confirmed."""
        from qlite.aem.manager import AemManager  # noqa: PLC0415 - ~3 ms (TPM code); only a start needs it

        AemManager(self.ctx, self.templates).check_start(name)

    def rpc_dir(self, q: Qube) -> Path:
        """Q's RPC directory on the host (created if missing)."""
        d = self.ctx.paths.rpc_dir(q.name)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        return d

    def rpc_ready(self, q: Qube, start_daemon: bool) -> None:
        """Tell the broker that Q runs, so that its socket appears. The
        daemon is started for app qubes; for a disposable it is only told,
        if it runs (its periodic rescan would find it anyway)."""
        daemon = self.ctx.daemon
        try:
            if start_daemon:
                daemon.ensure()
            daemon.notify(q.name)
        except QliteError as exc:
            self.ctx.warn(f"{q.name} runs, but the RPC broker is not available: {exc}")

    def arrange_network(self, q: Qube, cid: str, plan: NetPlan) -> None:
        """Set up what must hold before the qube's first process runs: a
        route through its gateway, or, offline under runsc's host-netns
        path, a loopback that is up (nobody else brings it up there)."""
        probe = self.ctx.runtime_probe
        offline = (
            plan.network == "none" and self.ctx.engine.runs_probed_runsc and not (probe is not None and probe.netstack)
        )
        if not plan.route_via and not offline:
            return
        self.ctx.engine.init(cid)
        info = self.ctx.engine.inspect_container(cid)
        if info is None:
            raise StateError(f"{q.name} vanished while its network was set up")
        if offline:
            if not info.pid:
                raise StateError(f"{q.name} has no process to bring loopback up in")
            self.ctx.net_apply.loopback_up(f"/proc/{info.pid}/ns/net")
        else:
            self.net.after_init(q, info, plan)

    def ensure_running(self, q: Qube) -> ContainerInfo:
        """Start Q if needed (as a netvm is, for its clients); its container."""
        name = container_name(self.ctx.home_hash, q.name)
        info = self.ctx.engine.inspect_container(name)
        if info is None or info.state not in ("running", "paused"):
            self.start(q.name, skip_if_running=True)
            info = self.ctx.engine.inspect_container(name)
        if info is None:
            raise StateError(f"{q.name} did not start")
        return info

    def image_for(self, q: Qube) -> str:
        """The image a qube starts from: its template's current revision."""
        template = q.template
        if q.is_disposable and template and self.exists(template):
            template = self.get(template).template
        if not template:
            raise StateError(f"qube {q.name!r} has no template")
        return self.templates.verified_image(template)

    def net_depth(self, q: Qube) -> int:
        """How many gateway qubes stand between Q and the host (0 for a loop,
        which its start reports)."""
        try:
            return len(self.netvm_chain(q))
        except InvalidValue:
            return 0

    def running_clients(self, name: str, containers: dict[str, ContainerInfo] | None = None) -> list[str]:
        """Running qubes whose netvm is NAME."""
        containers = self.containers() if containers is None else containers
        return sorted(
            q.name
            for q in self.list()
            if q.name != name and self.resolved_netvm(q) == name and self.state_of(q, containers) != State.HALTED
        )

    def shutdown(self, name: str, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, force: bool = False) -> bool:
        """Stop Q (SIGTERM, then SIGKILL after TIMEOUT) and discard its
        container. Returns False if it was not running. A gateway with
        running clients is refused unless FORCE, as in Qubes."""
        q = self.get(name)
        if q.provides_network and not force:
            clients = self.running_clients(name)
            if clients:
                raise StateError(
                    f"{name} is the netvm of running qubes: {', '.join(clients)}; shut them down first, or use --force"
                )
        try:
            return self.runtime(q).shutdown(q, timeout)
        finally:
            self.devices.release_qube(q.name)

    def kill(self, name: str) -> bool:
        q = self.get(name)
        try:
            return self.runtime(q).kill(q)
        finally:
            self.devices.release_qube(q.name)

    def pause(self, name: str) -> None:
        q = self.get(name)
        if self.state_of(q) != State.RUNNING:
            raise NotRunning(f"qube {name!r} is not running")
        self.runtime(q).pause(q)

    def unpause(self, name: str) -> None:
        q = self.get(name)
        if self.state_of(q) != State.PAUSED:
            raise NotPaused(f"qube {name!r} is not paused")
        self.runtime(q).resume(q)

    def run(
        self,
        name: str,
        argv: list[str],
        stdio: Stdio,
        user: str | None = None,
        autostart: bool = True,
    ) -> int:
        """Run ARGV in qube NAME with stdio passed through; its exit code."""
        if not argv:
            raise InvalidValue("no command given")
        q = self.get(name)
        linked = self.runtime(q).run_if_linked(q, shimmed(argv), stdio, user or q.default_user)
        if linked is not None:
            return linked
        state = self.state_of(q)
        if state == State.PAUSED:
            raise NotRunning(f"qube {name!r} is paused: unpause it first")
        if state != State.RUNNING:
            if not autostart:
                raise NotRunning(f"qube {name!r} is not running")
            self.start(name, skip_if_running=True)
        return self.runtime(q).run(q, shimmed(argv), stdio, user or q.default_user)

    def exec_in(self, q: Qube, argv: list[str], stdio: Stdio, user: str, env: dict[str, str]) -> int:
        """Run ARGV in running qube Q, whatever its mode; its exit code."""
        workdir, env = exec_env(q, user, env)
        return self.runtime(q).exec(q, argv, stdio, user, workdir, env)

    # -- prefs and tags --------------------------------------------------------

    def get_prefs(self, name: str) -> dict[str, tuple[str, bool]]:
        """Every property as (value, is_default)."""
        q = self.get(name)
        out = {"name": (q.name, False), "class": (q.klass, False), "uuid": (q.uuid, False)}
        for prop in PROPERTIES:
            out[prop] = self._pref(q, prop)
        out["ip"] = (self.net.address_of(q) if self.resolved_netvm(q) else "", False)
        return out

    def _pref(self, q: Qube, prop: str) -> tuple[str, bool]:
        if prop == "netvm":
            value = self.resolved_netvm(q)
            return (value or "", q.netvm_raw is None)
        if prop == "default_dispvm":
            return (self.resolved_default_dispvm(q) or "", q.default_dispvm_raw is None)
        value = getattr(q, prop)
        return (format_value(value), False)

    def set_pref(self, name: str, prop: str, text: str) -> None:
        q = self.get(name)
        self._apply_prop(q, prop, text)
        column = PROPERTIES[prop][0]
        value = getattr(
            q, "netvm_raw" if prop == "netvm" else "default_dispvm_raw" if prop == "default_dispvm" else prop
        )
        if isinstance(value, bool):
            value = int(value)
        self.qstore.set_column(name, column, value)
        note = next_start_note(name, prop, self.runtime(q).resources_fixed_because)
        if note is not None and self.state_of(q) != State.HALTED:
            self.ctx.warn(note)

    def reset_pref(self, name: str, prop: str) -> None:
        q = self.get(name)
        if prop not in ("netvm", "default_dispvm"):
            raise InvalidValue(f"property {prop!r} has no default to reset to")
        if prop == "netvm":
            q.netvm_raw = None
            self.netvm_chain(q)  # following the default must not make a loop
        self.qstore.set_column(name, PROPERTIES[prop][0], None)

    def _apply_prop(self, q: Qube, prop: str, text: str) -> None:
        """Parse and check one property value and set it on Q (not stored)."""
        value = parse_property(prop, text)
        if prop == "template":
            if q.is_disposable:
                raise InvalidValue("a disposable's template cannot change")
            self.check_template(str(value))
            q.template = str(value)
        elif prop == "netvm":
            q.netvm_raw = self.check_netvm(str(value), q.name)
        elif prop == "default_dispvm":
            q.default_dispvm_raw = self.check_dispvm(str(value))
        elif prop == "mode":
            self._check_mode(q, str(value))
            q.mode = parse_mode(str(value))
        elif prop == "provides_network" and value and not self.runtime(q).gateways:
            title = self.runtime(q).title
            raise InvalidValue(
                f"{q.name} is a {title}-mode qube; {title}-mode gateways are not available in this version"
            )
        elif prop == "provides_network" and not value:
            clients = [
                c.name
                for c in self.list()
                if c.netvm_raw == q.name or (c.netvm_raw is None and self.prefs.get("default_netvm") == q.name)
            ]
            if clients:
                raise InvalidValue(f"{q.name} is the netvm of {', '.join(sorted(clients))}; change theirs first")
            q.provides_network = False
        else:
            setattr(q, prop, value)

    def _check_mode(self, q: Qube, mode: str) -> None:
        if mode == q.mode:
            return
        if q.created_at and self.exists(q.name) and self.state_of(q) != State.HALTED:
            raise NotHalted(f"{q.name} is running: shut it down before changing its mode")
        runtime = self.runtime_of_mode(mode)
        if q.provides_network and not runtime.gateways:
            raise InvalidValue(
                f"{q.name} provides network; {runtime.title}-mode gateways are not available in this version"
            )
        if self.exists(q.name):
            runtime.check_private(q)

    def tags(self, name: str) -> list[str]:
        return sorted(self.get(name).tags)

    def add_tags(self, name: str, tags: list[str]) -> None:
        self.get(name)
        for tag in tags:
            if not TAG_RE.fullmatch(tag):
                # As in Qubes' admin API: a tag is also a word of policy files (@tag:NAME).
                raise InvalidValue(f"invalid tag {tag!r}: a tag is 1 to 64 letters, digits, '-' or '_'")
        self.qstore.add_tags(name, tags)

    def del_tags(self, name: str, tags: list[str]) -> None:
        q = self.get(name)
        missing = [t for t in tags if t not in q.tags]
        if missing:
            raise NotFound(f"qube {name!r} has no tag {missing[0]!r}")
        self.qstore.del_tags(name, tags)

    # Last in the class: a method named "list" would shadow the builtin in
    # the annotations of every method after it.
    def list(self) -> list[Qube]:
        return self.qstore.list()
