"""The one seam through which qlite mounts and unmounts on the host:
attached filesystems and the qubes' devices directories."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from qlite.devices.identity import host_mounts
from qlite.errors import EngineError

TIMEOUT_S = 60


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise EngineError(f"{what}: {lines[-1] if lines else f'exit {proc.returncode}'}")


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def is_mountpoint(path: Path) -> bool:
    return str(path) in {mp for mps in host_mounts(mountinfo()).values() for mp in mps}


def mount(device: str, target: Path, options: str) -> None:
    _run(["mount", "-o", options, device, str(target)], f"mounting {device}")


def make_shared(directory: Path) -> None:
    """Make DIRECTORY a mount of its own with shared propagation, so that
    what is mounted below it reaches the containers that bind it (rslave)."""
    if not is_mountpoint(directory):
        _run(["mount", "--bind", str(directory), str(directory)], "preparing the devices directory")
    _run(["mount", "--make-rshared", str(directory)], "preparing the devices directory")


def umount(target: Path, lazy: bool = False) -> None:
    _run(["umount", *(["-l"] if lazy else []), str(target)], f"unmounting {target}")


def busy(device: str) -> bool:
    """Whether DEVICE is mounted (even lazily, out of every view) or held
    open exclusively: the kernel then refuses an exclusive open."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    os.close(fd)
    return False


def sync() -> None:
    _run(["sync"], "syncing")
