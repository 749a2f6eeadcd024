"""The one seam through which qlite mounts and unmounts on the host:
attached filesystems and the qubes' devices directories."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from qlite.runtime.command import run_tool

TIMEOUT_S = 60


def host_mounts(mountinfo: str) -> dict[str, list[str]]:
    """major:minor -> mount points, from /proc/self/mountinfo text."""
    out: dict[str, list[str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            out.setdefault(fields[2], []).append(fields[4].replace("\\040", " "))
    return out


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def is_mountpoint(path: Path) -> bool:
    return str(path) in {mp for mps in host_mounts(mountinfo()).values() for mp in mps}


def mount(device: str, target: Path, options: str) -> None:
    run_tool(["mount", "-o", options, device, str(target)], f"mounting {device}", TIMEOUT_S)


def bind_read_only_shared(source: Path, view: Path) -> None:
    """Bind SOURCE at VIEW read-only, with shared propagation: a qube that
    binds VIEW (rslave) can create nothing in it, while filesystems mounted
    later on directories below VIEW reach it with their own flags."""
    if not is_mountpoint(view):
        run_tool(["mount", "--bind", str(source), str(view)], "preparing the devices directory", TIMEOUT_S)
    run_tool(["mount", "-o", "remount,bind,ro", str(view)], "preparing the devices directory", TIMEOUT_S)
    run_tool(["mount", "--make-rshared", str(view)], "preparing the devices directory", TIMEOUT_S)


def umount(target: Path, lazy: bool = False) -> None:
    run_tool(["umount", *(["-l"] if lazy else []), str(target)], f"unmounting {target}", TIMEOUT_S)


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
    run_tool(["sync"], "syncing", TIMEOUT_S)
