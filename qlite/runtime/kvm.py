"""Can /dev/kvm run a standard guest here?

Some hosts expose /dev/kvm but cannot run an ordinary x86-64 guest: PVM
hosts (kvm_pvm, no vmx/svm flag) and broken nested setups hang right after
the firmware. The probe boots a tiny firmware (kvmprobe.S) that goes from
reset to 64-bit long mode and then writes to QEMU's isa-debug-exit port.
It runs under TCG first, to prove the probe itself works, then under KVM
with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from qlite.errors import QliteError
from qlite.runtime.command import ToolTimedOut, run_tool

# The assembled kvmprobe.S (as --64; ld -Ttext=0 --oformat binary): the
# code at offset 0 and the reset vector's far jump at 0xFFF0.
CODE = bytes.fromhex(
    "fa31c08ed88ed0b800f08ed8660f0116c0000f20c06683c8010f22c066ea24000f0008"
    "0066b810008ed88ec08ed0bf0010000031c0b9000c0000f3abc7050010000003200000"
    "c7050020000003300000c7050030000083000000c7050830000083002000b800100000"
    "0f22d80f20e083c8200f22e0b9800000c00f320d000100000f300f20c00d010000800f"
    "22c0ea95000f00180066b82a0066e7f4f4ebfd900000000000000000ffff0000009acf"
    "00ffff00000092cf00ffff0000009aaf001f00a0000f"
)
RESET = bytes.fromhex("ea000000f0")
EXIT_OK = (0x2A << 1) | 1
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class KvmProbe:
    present: bool
    usable: bool
    detail: str


def firmware() -> bytes:
    rom = bytearray(0x10000)
    rom[: len(CODE)] = CODE
    rom[0xFFF0 : 0xFFF0 + len(RESET)] = RESET
    return bytes(rom)


def qemu_command(qemu: str, bios: str, accel: str) -> list[str]:
    return [
        qemu,
        "-machine",
        f"pc,accel={accel}",
        "-nodefaults",
        "-nographic",
        "-display",
        "none",
        "-m",
        "16",
        "-bios",
        bios,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]


def _boot(qemu: str, bios: str, accel: str) -> tuple[bool, str]:
    try:
        proc = run_tool(qemu_command(qemu, bios, accel), f"booting the probe under {accel}", TIMEOUT_S, check=False)
    except ToolTimedOut:
        return False, f"the guest hung (no exit within {TIMEOUT_S:.0f}s)"
    except QliteError as exc:
        return False, str(exc)
    if proc.returncode == EXIT_OK:
        return True, "reached 64-bit long mode"
    err = (proc.stderr or "").strip().splitlines()
    return False, err[-1] if err else f"qemu exited {proc.returncode}"


def cpu_virt_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split()}
    except OSError:
        return set()
    return flags & {"vmx", "svm"}


def probe_kvm() -> KvmProbe:
    if not os.path.exists("/dev/kvm"):
        return KvmProbe(False, False, "/dev/kvm is absent")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return KvmProbe(True, False, "qemu-system-x86_64 is not installed, so KVM was not tested")
    with tempfile.NamedTemporaryFile(prefix="qlite-kvmprobe-", suffix=".bin") as f:
        f.write(firmware())
        f.flush()
        ok, detail = _boot(qemu, f.name, "tcg")
        if not ok:
            return KvmProbe(True, False, f"probe firmware failed under TCG: {detail}")
        ok, detail = _boot(qemu, f.name, "kvm")
    if ok:
        return KvmProbe(True, True, "a standard guest reached 64-bit mode under KVM")
    hint = "" if cpu_virt_flags() else " (the CPU shows no vmx/svm flag: a PVM or nested host?)"
    return KvmProbe(True, False, f"KVM cannot run a standard guest: {detail}{hint}")


def cached_probe(cache: Path) -> KvmProbe:
    """probe_kvm(), remembered in CACHE for this kernel and QEMU: the probe
    can take seconds (a hanging guest is waited out)."""
    qemu = shutil.which("qemu-system-x86_64") or ""
    key = f"{platform.release()}:{qemu}:{os.stat(qemu).st_mtime if qemu else 0}"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(cache.read_text())
        if data["key"] == key:
            return KvmProbe(bool(data["present"]), bool(data["usable"]), str(data["detail"]))
    result = probe_kvm()
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"key": key, **asdict(result)}))
    return result
