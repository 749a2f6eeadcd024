"""The QEMU command line of a VM qube: a pure function of its config.

microvm boots fastest (virtio-mmio, no firmware tables to walk, no PCI) but
has no hot-plug; q35 gets PCIe root ports so that block devices can be
attached while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qlite.vm.initramfs import AGENT_PORT

MACHINES = ("microvm", "q35")
HOTPLUG_PORTS = 4
TAP = "qtap0"


@dataclass(frozen=True)
class NetConfig:
    ip: str  # address/prefix
    gateway: str
    dns: tuple[str, ...]
    mac: str
    tap: str = TAP


@dataclass(frozen=True)
class VmConfig:
    name: str
    machine: str  # microvm | q35
    accel: str  # kvm | tcg
    memory_mib: int
    vcpus: int
    kernel: str
    initrd: str
    root_overlay: str  # qcow2 over the template's root disk
    private_disk: str
    qmp_socket: str
    agent_socket: str
    console_log: str
    pidfile: str
    net: NetConfig | None = None
    boot_devices: tuple[tuple[str, str, bool], ...] = ()  # (node, host path, read-only) given at boot
    extra_append: tuple[str, ...] = field(default_factory=tuple)


def kernel_cmdline(cfg: VmConfig) -> str:
    words = ["console=ttyS0", "quiet", "panic=-1", "reboot=t", f"qlite.name={cfg.name}"]
    if cfg.machine == "microvm":
        words.append("pci=off")
    if cfg.net is not None:
        words += [f"qlite.ip={cfg.net.ip}", f"qlite.gw={cfg.net.gateway}"]
        if cfg.net.dns:
            words.append(f"qlite.dns={','.join(cfg.net.dns)}")
    return " ".join([*words, *cfg.extra_append])


def _dev(machine: str, kind: str) -> str:
    """virtio device names differ by transport: mmio on microvm, PCI on q35."""
    return f"virtio-{kind}-device" if machine == "microvm" else f"virtio-{kind}-pci"


def qemu_argv(qemu: str, cfg: VmConfig) -> list[str]:
    if cfg.machine not in MACHINES:
        raise ValueError(f"unknown machine {cfg.machine!r}")
    machine = "microvm,acpi=on,rtc=on" if cfg.machine == "microvm" else "q35"
    argv = [
        qemu,
        "-name",
        f"qlite-{cfg.name},process=qlite-{cfg.name}",
        "-machine",
        f"{machine},accel={cfg.accel}",
        "-cpu",
        "host" if cfg.accel == "kvm" else "max",
        "-m",
        str(cfg.memory_mib),
        "-smp",
        str(cfg.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-display",
        "none",
        "-no-reboot",
        # QEMU's own seccomp filter: no exec, no privilege changes, no obsolete calls.
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-serial",
        f"file:{cfg.console_log}",
        "-kernel",
        cfg.kernel,
        "-initrd",
        cfg.initrd,
        "-append",
        kernel_cmdline(cfg),
        "-qmp",
        f"unix:{cfg.qmp_socket},server=on,wait=off",
        "-pidfile",
        cfg.pidfile,
        # vda: the root disk (template, copy-on-write for this boot); vdb: private.
        "-drive",
        f"id=root,file={cfg.root_overlay},format=qcow2,if=none,discard=unmap",
        "-device",
        f"{_dev(cfg.machine, 'blk')},drive=root",
        "-drive",
        f"id=private,file={cfg.private_disk},format=raw,if=none,discard=unmap",
        "-device",
        f"{_dev(cfg.machine, 'blk')},drive=private",
        "-device",
        _dev(cfg.machine, "serial"),
        "-chardev",
        f"socket,id=agent,path={cfg.agent_socket},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=agent,name={AGENT_PORT}",
    ]
    if cfg.net is not None:
        argv += [
            "-netdev",
            f"tap,id=net0,ifname={cfg.net.tap},script=no,downscript=no",
            "-device",
            f"{_dev(cfg.machine, 'net')},netdev=net0,mac={cfg.net.mac}",
        ]
    for node, path, read_only in cfg.boot_devices:
        argv += [
            "-drive",
            f"id={node},file={path},format=raw,if=none,readonly={'on' if read_only else 'off'}",
            "-device",
            f"{_dev(cfg.machine, 'blk')},drive={node}",
        ]
    if cfg.machine == "q35":
        for i in range(HOTPLUG_PORTS):
            argv += ["-device", f"pcie-root-port,id={hotplug_bus(i)},chassis={i + 1},slot={i + 1}"]
    return argv


def hotplug_bus(index: int) -> str:
    return f"hp{index}"
