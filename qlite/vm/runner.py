"""The lifecycle of VM-mode qubes: start, run, pause, shut down, kill.

A running VM qube has:
- a *network holder*: a container of the qube's own template, named and
  labelled as a container qube would be, that idles in the network
  namespace podman made for the qube. It holds the qube's place on its
  network, so the bridge, NAT and the host firewall are the very ones a
  container qube gets. Inside that namespace a tap device is joined to the
  qube's interface by tc mirred, both ways, and the VM takes over the
  interface's MAC and address, so the VM *is* the qube on the network;
- a supervisor process (qlite.vm.supervisor) that owns QEMU;
- QEMU, controlled over QMP (qlite.engines.qemu).
The qube counts as running while its holder runs and its supervisor lives.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qlite.agent import client
from qlite.domain.context import Context, VmControl
from qlite.domain.model import Qube, State
from qlite.domain.ports import exec_env
from qlite.domain.spec import IDLE_COMMAND, container_name, engine_labels, volume_name
from qlite.engines.base import ContainerInfo, ContainerSpec, Stdio
from qlite.errors import EngineError, InvalidValue, QliteError, StateError
from qlite.paths import Paths
from qlite.runtime.kvm import cached_probe
from qlite.vm import disks, kernel
from qlite.vm.qemu_args import HOTPLUG_PORTS, MACHINES, TAP, NetConfig, VmConfig, hotplug_bus, qemu_argv

if TYPE_CHECKING:  # annotation only: the manager that owns this runner (it imports us)
    from qlite.core.qubes import QubeManager

MACHINE_FEATURE = "vm.machine"
KVM_CACHE = Path("/run/qlite-kvm-probe.json")
BOOT_TIMEOUT_S = float(os.environ.get("QLITE_VM_BOOT_TIMEOUT", "300"))
SUPERVISOR_MODULE = "qlite.vm.supervisor"


def machine_of(features: dict[str, str]) -> str:
    machine = features.get(MACHINE_FEATURE, "microvm")
    if machine not in MACHINES:
        raise InvalidValue(f"feature {MACHINE_FEATURE}={machine!r}: expected one of {', '.join(MACHINES)}")
    return machine


def net_config(ip: str, mac: str, subnet: str, gateway: str, dns: tuple[str, ...]) -> NetConfig:
    """The guest's address (with the subnet's prefix), route and resolvers."""
    prefix = ipaddress.ip_network(subnet).prefixlen
    return NetConfig(ip=f"{ip}/{prefix}", gateway=gateway, dns=dns, mac=mac)


def tsc_khz(cpuinfo: str) -> int | None:
    """The host's clock rate in kHz from /proc/cpuinfo ("cpu MHz")."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return round(float(value) * 1000) or None
            except ValueError:
                return None
    return None


def tcg_append() -> tuple[str, ...]:
    """Kernel arguments a TCG guest needs. Under TCG the guest's TSC ticks
    at the host's rate, and calibrating it against the emulated PIT fails
    on a busy host, after which the kernel hangs at boot; telling it the
    rate skips the calibration."""
    try:
        khz = tsc_khz(Path("/proc/cpuinfo").read_text())
    except OSError:
        return ()
    return (f"tsc_early_khz={khz}",) if khz else ()


def _pid_alive(pidfile: Path, marker: str) -> int | None:
    """The pid in PIDFILE if that process lives and its command line holds MARKER."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    if marker.encode() not in cmdline or stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    return pid


class VmRunner:
    """The runtime of VM qubes (qlite.domain.ports.QubeRuntime), with QEMU."""

    title = "VM"
    gateways = False  # not in this version
    preloadable = False  # not in this version
    takes_block_devices = True  # hot-plugged over QMP, or given at boot on microvm
    # No balloon or hot-plug of either.
    resources_fixed_because = "QEMU fixes a VM's memory and vCPUs when it boots"

    def __init__(self, ctx: Context, qubes: QubeManager) -> None:
        self.ctx = ctx
        self.qubes = qubes  # the glue every mode shares
        self.paths: Paths = ctx.paths

    # -- where things are ---------------------------------------------------------

    def run_dir(self, q: Qube) -> Path:
        return self.paths.vm_run_dir(q.name)

    def supervisor_pid(self, q: Qube) -> int | None:
        d = self.run_dir(q)
        return _pid_alive(d / "supervisor.pid", str(d / "vm.json"))

    def qemu_pid(self, q: Qube) -> int | None:
        return _pid_alive(self.run_dir(q) / "qemu.pid", f"qlite-{q.name},")

    def qmp(self, q: Qube) -> VmControl:
        return self.ctx.hypervisor.control(self.run_dir(q) / "qmp.sock", q.name)

    def state(self, q: Qube, holder: ContainerInfo | None) -> State:
        if holder is None or holder.state not in ("running", "paused"):
            return State.HALTED
        if self.supervisor_pid(q) is None:
            return State.HALTED  # QEMU died with it; reconciliation removes the holder
        return State.PAUSED if (self.run_dir(q) / "paused").exists() else State.RUNNING

    def accel(self) -> str:
        forced = os.environ.get("QLITE_VM_ACCEL", "")
        if forced in ("kvm", "tcg"):
            return forced
        probe = cached_probe(KVM_CACHE)
        return "kvm" if probe.usable else "tcg"

    # -- start ---------------------------------------------------------------------

    def start(self, q: Qube, stale: ContainerInfo | None = None) -> None:
        """Boot Q and wait until its agent answers. On failure nothing of
        the attempt is left behind."""
        if q.provides_network:
            raise InvalidValue(f"{q.name} provides network; VM-mode gateways are not available in this version")
        engine, hh = self.ctx.engine, self.ctx.home_hash
        vol = engine.inspect_volume(volume_name(hh, q.name))
        if vol is not None:
            disks.verify_private(vol.mountpoint)  # before anything is made or fetched
        machine = machine_of(self.qubes.features.all(q.name))
        accel = self.accel()
        if accel == "tcg":
            self.ctx.warn(
                f"{q.name} runs under TCG emulation, without KVM: it is slow, "
                "but still behind a hypervisor boundary (see 'qlite doctor')"
            )
        progress = self.ctx.progress
        k = kernel.ensure(self.paths, progress)
        image = self.qubes.image_for(q)
        info = engine.inspect_image(image)
        if info is None:
            raise StateError(f"the template image {image} of {q.name} is missing")
        labels = engine_labels(hh, q.name, "export", q.owner)
        root = disks.ensure_root_disk(
            self.paths, info.id, lambda tar: engine.export_image(image, tar, labels), progress
        )
        private = self._private_disk(q)
        if stale is not None:
            engine.remove_container(stale.id, force=True)
        d = self.run_dir(q)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        try:
            overlay = disks.create_overlay(root, d / "root.qcow2")
            holder, net = self._start_holder(q, image)
            cfg = VmConfig(
                name=q.name,
                machine=machine,
                accel=accel,
                memory_mib=q.maxmem or q.memory,
                vcpus=q.vcpus,
                kernel=str(k.vmlinuz),
                initrd=str(k.initrd),
                root_overlay=str(overlay),
                private_disk=str(private),
                qmp_socket=str(d / "qmp.sock"),
                agent_socket=str(d / "agent-qemu.sock"),
                console_log=str(d / "console.log"),
                pidfile=str(d / "qemu.pid"),
                net=net,
                extra_append=tcg_append() if accel == "tcg" else (),
                boot_devices=self.qubes.devices.claim_for_boot(q.name) if machine == "microvm" else (),
            )
            self._launch(q, cfg, holder)
        except BaseException:
            self._discard(q)
            raise
        self.qubes.rpc_ready(q, start_daemon=not q.is_disposable)

    def _private_disk(self, q: Qube) -> Path:
        return disks.ensure_private(self.qubes.private_mountpoint(q))

    def _start_holder(self, q: Qube, image: str) -> tuple[ContainerInfo, NetConfig | None]:
        engine, hh = self.ctx.engine, self.ctx.home_hash
        plan = self.qubes.net.prepare(q)
        labels = {**engine_labels(hh, q.name, "disp" if q.is_disposable else "app", q.owner), "qlite.mode": "vm"}
        spec = ContainerSpec(
            name=container_name(hh, q.name),
            image=image,
            command=IDLE_COMMAND,
            labels=labels,
            hostname=q.name,
            user="root",
            network=plan.network,
            dns=plan.dns,
        )
        cid = engine.create_container(spec)
        self.qubes.arrange_network(q, cid, plan)
        engine.start(cid)
        holder = engine.inspect_container(cid)
        if holder is None or not holder.pid:
            raise StateError(f"the network holder of {q.name} did not start")
        if plan.network == "none":
            return holder, None
        att = holder.networks.get(plan.network)
        nets = self.qubes.net.networks()
        network = nets.get(q.name)
        if att is None or network is None or not holder.netns:
            raise StateError(f"{q.name} has no place on its network")
        bridge_gw = network.gateways[0] if network.gateways else str(ipaddress.ip_network(network.subnets[0])[1])
        gateway = plan.route_via or bridge_gw
        net = net_config(att.ip, att.mac, network.subnets[0], gateway, plan.dns or (bridge_gw,))
        self.ctx.net_apply.tap_mirror(holder.netns, att.mac, TAP)
        return holder, net

    def _launch(self, q: Qube, cfg: VmConfig, holder: ContainerInfo) -> None:
        d = self.run_dir(q)
        qemu = shutil.which("qemu-system-x86_64")
        if not qemu:
            raise StateError("qemu-system-x86_64 is not installed (run setup.sh)")
        config = {
            "home": str(self.paths.home),
            "run_dir": str(d),
            "argv": qemu_argv(qemu, cfg),
            "netns": holder.netns if cfg.net is not None else "",
            "holder": holder.id,
            "agent_socket": cfg.agent_socket,
            "client_socket": str(d / "agent.sock"),
            "rpc_socket": str(self.qubes.rpc_dir(q) / "rpc.sock"),
            "boot_timeout": BOOT_TIMEOUT_S,
        }
        (d / "vm.json").write_text(json.dumps(config, indent=1))
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        boot = self.ctx.hypervisor.start_supervisor(
            SUPERVISOR_MODULE, d / "vm.json", self.paths.log_dir / f"vm-{q.name}.log"
        )
        # Written before the wait: while it boots the qube counts as running,
        # so that no reconciliation takes its holder away.
        (d / "supervisor.pid").write_text(f"{boot.pid}\n")
        answer = boot.answer()
        if answer != "ok":
            raise StateError(
                f"VM qube {q.name} did not boot: {answer.removeprefix('error ') or 'no answer'}{self._console_tail(q)}"
            )

    def _console_tail(self, q: Qube) -> str:
        try:
            lines = [
                ln for ln in (self.run_dir(q) / "console.log").read_text(errors="replace").splitlines() if ln.strip()
            ]
        except OSError:
            return ""
        return f" (console: {lines[-1].strip()[:200]})" if lines else ""

    # -- stop --------------------------------------------------------------------------

    def shutdown(self, q: Qube, timeout: float) -> bool:
        """Press the power button; pull the plug after TIMEOUT."""
        sup = self.supervisor_pid(q)
        if sup is None:
            was = self._holder_of(q) is not None
            self._discard(q)
            return was
        self._unpause_for_stop(q)
        try:
            self.qmp(q).powerdown()
        except EngineError as exc:
            self.ctx.warn(f"{q.name}: the power button could not be pressed ({exc}); stopping it at once")
            timeout = 0
        if not self._wait_gone(q, timeout):
            self.qmp(q).quit()
            if not self._wait_gone(q, 10):
                self._signal(sup, signal.SIGKILL)
                self._wait_gone(q, 10)
        self._discard(q)
        return True

    def kill(self, q: Qube) -> bool:
        sup = self.supervisor_pid(q)
        qemu = self.qemu_pid(q)
        if qemu is not None:
            self._signal(qemu, signal.SIGKILL)
        if sup is not None and not self._wait_gone(q, 10):
            self._signal(sup, signal.SIGKILL)
            self._wait_gone(q, 5)
        existed = self._holder_of(q) is not None or sup is not None
        self._discard(q)
        return existed

    def _unpause_for_stop(self, q: Qube) -> None:
        if (self.run_dir(q) / "paused").exists():
            with contextlib.suppress(EngineError):
                self.resume(q)

    def _wait_gone(self, q: Qube, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.supervisor_pid(q) is None:
                return True
            time.sleep(0.1)
        return self.supervisor_pid(q) is None

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _holder_of(self, q: Qube) -> ContainerInfo | None:
        return self.ctx.engine.inspect_container(container_name(self.ctx.home_hash, q.name))

    def _discard(self, q: Qube) -> None:
        """Remove what a boot of Q made, whatever state it is in."""
        with contextlib.suppress(QliteError):
            self.ctx.engine.remove_container(container_name(self.ctx.home_hash, q.name), force=True)
        shutil.rmtree(self.run_dir(q), ignore_errors=True)

    # -- while it runs -----------------------------------------------------------------

    def pause(self, q: Qube) -> None:
        self.qmp(q).pause()
        (self.run_dir(q) / "paused").touch()

    def resume(self, q: Qube) -> None:
        self.qmp(q).resume()
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir(q) / "paused").unlink()

    def exec(self, q: Qube, argv: list[str], stdio: Stdio, user: str, cwd: str, env: dict[str, str]) -> int:
        return client.exec_in(self.run_dir(q) / "agent.sock", q.name, argv, stdio, user, cwd, env)

    def check_private(self, q: Qube) -> None:
        """Any private volume becomes the VM's disk (verified at start)."""

    def run_if_linked(self, q: Qube, argv: list[str], stdio: Stdio, user: str) -> int | None:
        return None  # the supervisor's socket outlives a VM that stopped: ask QEMU's state first

    def run(self, q: Qube, argv: list[str], stdio: Stdio, user: str) -> int:
        """The agent's client passes Ctrl-C on to the command (a SIGNAL frame)."""
        workdir, env = exec_env(q, user, {})
        return self.exec(q, argv, stdio, user, workdir, env)

    def run_disposable(
        self,
        q: Qube,
        argv: list[str],
        stdio: Stdio,
        user: str,
        env: dict[str, str],
        on_created: Callable[[Qube], None] | None,
    ) -> int:
        """Boot disposable Q (its private disk made from the volume its
        disposable template's copy filled), then run its one command."""
        self.start(q)
        if on_created is not None:
            on_created(q)
        workdir, env = exec_env(q, user, env)
        return self.exec(q, argv, stdio, user, workdir, env)

    def attach_block(self, q: Qube, node: str, path: str, read_only: bool) -> str:
        """Hot-plug PATH into Q (q35 only); returns the PCIe port used."""
        if machine_of(self.qubes.features.all(q.name)) != "q35":
            raise InvalidValue(
                f"{q.name} boots on microvm, which has no hot-plug: "
                f"set 'qlite features {q.name} {MACHINE_FEATURE} q35' and restart it"
            )
        ports = self._ports(q)
        if node in ports:
            raise InvalidValue(f"{q.name} already has a device {node!r}")
        free = next((i for i in range(HOTPLUG_PORTS) if i not in ports.values()), None)
        if free is None:
            raise StateError(f"{q.name} has no free hot-plug port (it has {HOTPLUG_PORTS})")
        self.qmp(q).attach_block(node, path, read_only, hotplug_bus(free))
        self._save_ports(q, {**ports, node: free})
        return hotplug_bus(free)

    def detach_block(self, q: Qube, node: str) -> None:
        if self.supervisor_pid(q) is None:
            return  # the VM is gone, and the device with it
        ports = self._ports(q)
        if node not in ports:
            raise InvalidValue(f"{q.name} has no attached device {node!r}")
        self.qmp(q).detach_block(node)
        del ports[node]
        self._save_ports(q, ports)

    def _ports(self, q: Qube) -> dict[str, int]:
        """Hot-plugged devices of this boot: node name -> port index."""
        try:
            return {str(k): int(v) for k, v in json.loads((self.run_dir(q) / "ports.json").read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_ports(self, q: Qube, ports: dict[str, int]) -> None:
        (self.run_dir(q) / "ports.json").write_text(json.dumps(ports))
