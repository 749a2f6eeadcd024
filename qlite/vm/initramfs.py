"""The initramfs of a VM qube: busybox, the few kernel modules needed to
reach the disks and the agent's port, and an init script.

Init mounts the root disk (the template's filesystem under a per-boot
copy-on-write overlay) and the private disk, configures the network from
the kernel command line, and hands PID 1 to the guest agent. No systemd
boot: a qube is ready when its agent says hello.

The cpio writer and the module ordering are pure; ``build`` does the I/O.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qlite.errors import EngineError
from qlite.runtime.command import run_tool

# Modules to load, with their dependencies resolved by module_order().
# evdev and button: the agent powers off on the ACPI power button.
WANTED_MODULES = ("virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "evdev", "button")
AGENT_PORT = "org.qlite.agent"
AGENT_COMMAND = "/usr/bin/python3 -u -m qlite_guest.vmagent"

INIT_SCRIPT = (
    r"""#!/bin/busybox sh
# qlite VM init: mounts, network, then the guest agent as PID 1.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "qlite-init: $*" >/dev/console; echo o >/proc/sysrq-trigger; poweroff -f; }
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}";; esac; done; }
i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -b /dev/vda ] || fail "no root disk"
mkdir -p /newroot
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount the root disk"
if [ -b /dev/vdb ]; then
  mount -t ext4 -o rw,noatime,nodev,nosuid /dev/vdb /newroot/rw || fail "cannot mount the private disk"
  mkdir -p /newroot/rw/home/user
fi
for d in /tmp /var/tmp /run; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "/newroot$d"; done
chmod 755 /newroot/run
mkdir -p /newroot/run/qlite /newroot/dev/pts /newroot/dev/shm
host=$(arg qlite.name); [ -n "$host" ] && hostname "$host" && echo "$host" >/newroot/etc/hostname
ip link set lo up
addr=$(arg qlite.ip)
if [ -n "$addr" ]; then
  ip link set eth0 up
  ip addr add "$addr" dev eth0
  gw=$(arg qlite.gw); [ -n "$gw" ] && ip route add default via "$gw"
  : >/newroot/etc/resolv.conf
  for s in $(arg qlite.dns | tr , ' '); do echo "nameserver $s" >>/newroot/etc/resolv.conf; done
fi
for d in proc sys dev; do mount --move "/$d" "/newroot/$d"; done
exec switch_root /newroot """
    + AGENT_COMMAND
    + "\n"
)


@dataclass(frozen=True)
class Entry:
    """One file in a cpio archive."""

    path: str  # without a leading slash
    mode: int  # including the file-type bits
    data: bytes = b""


def _header(ino: int, e: Entry) -> bytes:
    name = e.path.encode() + b"\0"
    fields = (ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, 0, 0, len(name), 0)
    return b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + name


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """The entries as a cpio "newc" archive (what the kernel unpacks)."""
    out = io.BytesIO()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        head = _header(ino if e.path != "TRAILER!!!" else 0, e)
        out.write(head + _pad(len(head)) + e.data + _pad(len(e.data)))
    return out.getvalue()


def module_order(wanted: Iterable[str], depends: dict[str, tuple[str, ...]]) -> list[str]:
    """WANTED modules and everything they depend on, dependencies first.
    Modules missing from DEPENDS are taken to be built into the kernel."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name not in depends:
            return
        if name in visiting:
            raise EngineError(f"kernel modules depend on each other in a loop at {name}")
        visiting.add(name)
        for dep in depends[name]:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def entries_for(busybox: bytes, modules: list[tuple[str, bytes]]) -> list[Entry]:
    """The archive's contents: directories, busybox, init, the modules in
    load order (MODULES: (file name, contents))."""
    d, x, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
    out = [Entry(p, d) for p in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "newroot")]
    out += [Entry("bin/busybox", x, busybox), Entry("init", x, INIT_SCRIPT.encode())]
    out += [Entry(f"lib/modules/{name}", f, data) for name, data in modules]
    out.append(Entry("etc/modules.order", f, "".join(f"{n}\n" for n, _ in modules).encode()))
    return out


def module_files(modules_dir: Path) -> dict[str, Path]:
    """Every module under MODULES_DIR by name (dashes read as underscores)."""
    return {p.name.split(".ko")[0].replace("-", "_"): p for p in modules_dir.rglob("*.ko*")}


def module_depends(path: Path) -> tuple[str, ...]:
    out = run_tool(["modinfo", "-F", "depends", str(path)], f"cannot read the dependencies of {path.name}", 30)
    return tuple(d.replace("-", "_") for d in out.strip().split(",") if d)


def build(modules_dir: Path, busybox: Path, dst: Path) -> Path:
    """Write the initramfs for the kernel whose modules are in MODULES_DIR."""
    files = module_files(modules_dir)
    depends: dict[str, tuple[str, ...]] = {}
    todo = [m for m in WANTED_MODULES if m in files]
    while todo:  # bounded: each module is read once
        name = todo.pop()
        if name in depends:
            continue
        depends[name] = module_depends(files[name])
        todo += [dep for dep in depends[name] if dep in files and dep not in depends]
    order = module_order(WANTED_MODULES, depends)
    if "virtio_blk" not in order:
        raise EngineError(f"the kernel in {modules_dir} has no virtio_blk module")
    modules = [(f"{name}.ko", _module_bytes(files[name])) for name in order]
    data = gzip.compress(cpio_newc(entries_for(busybox.read_bytes(), modules)), mtime=0)
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)
    return dst


def _module_bytes(path: Path) -> bytes:
    """A module's contents, uncompressed (busybox insmod reads plain .ko)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    return data
