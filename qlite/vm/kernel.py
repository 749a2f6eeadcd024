"""The kernel VM qubes boot: Debian's cloud kernel, never installed on
the host. Its package is fetched once with ``apt-get download`` into a
cache every home shares, and unpacked with ``dpkg-deb -x`` into the home.
The initramfs (busybox from the host's busybox-static) is built next to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qlite.errors import EngineError, EngineUnavailable
from qlite.paths import Paths
from qlite.progress import Progress, file_lock
from qlite.runtime.command import run_tool
from qlite.vm import initramfs

META_PACKAGE = "linux-image-cloud-amd64"
PACKAGE_CACHE = Path("/var/cache/qlite/kernel")
BUSYBOX = Path("/bin/busybox")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path
    initrd: Path
    modules: Path  # lib/modules/<version>, copied into every root disk


def kernel_package(meta: str = META_PACKAGE) -> str:
    """The versioned package META depends on, from the host's apt lists."""
    out = run_tool(
        ["apt-cache", "depends", "--no-recommends", "--no-suggests", meta], "finding the VM kernel", TIMEOUT_S
    )
    return parse_depends(out, meta)


def parse_depends(text: str, meta: str) -> str:
    for line in text.splitlines():
        word = line.strip()
        if word.startswith("Depends:"):
            dep = word.split(":", 1)[1].strip()
            if dep.startswith("linux-image-"):
                return dep
    raise EngineError(f"apt knows no kernel that {meta} depends on: run 'apt-get update'")


def fetch_package(progress: Progress) -> Path:
    """The kernel .deb in the shared cache, downloaded if missing."""
    PACKAGE_CACHE.mkdir(parents=True, exist_ok=True)
    with file_lock(PACKAGE_CACHE / ".lock"):
        cached = sorted(PACKAGE_CACHE.glob("linux-image-*.deb"))
        if cached:
            return cached[-1]
        package = kernel_package()
        progress(f"downloading {package} (not installed on the host)")
        with tempfile.TemporaryDirectory(dir=PACKAGE_CACHE) as tmp:
            os.chmod(tmp, 0o755)  # apt's sandbox user writes here
            run_tool(["apt-get", "download", "-q", package], "downloading the VM kernel", TIMEOUT_S, cwd=Path(tmp))
            debs = sorted(Path(tmp).glob("linux-image-*.deb"))
            if not debs:
                raise EngineError(f"apt-get download {package} produced no package")
            dst = PACKAGE_CACHE / debs[0].name
            os.replace(debs[0], dst)
        return dst


def installed(paths: Paths) -> Kernel | None:
    """The kernel unpacked in this home, if it is complete."""
    root = paths.vm_kernel_dir
    versions = sorted(p.name for p in (root / "lib" / "modules").glob("*")) if root.is_dir() else []
    if not versions:
        return None
    version = versions[-1]
    k = Kernel(
        version,
        root / "boot" / f"vmlinuz-{version}",
        root / f"initrd-{version}.img",
        root / "lib" / "modules" / version,
    )
    return k if k.vmlinuz.is_file() and k.initrd.is_file() else None


def ensure(paths: Paths, progress: Progress = lambda _m: None) -> Kernel:
    """This home's VM kernel and initramfs, fetched and built if missing."""
    found = installed(paths)
    if found is not None:
        return found
    if not BUSYBOX.is_file():
        raise EngineUnavailable(f"{BUSYBOX} is missing: install busybox-static (setup.sh does)")
    deb = fetch_package(progress)
    root = paths.vm_kernel_dir
    with file_lock(paths.run_dir / "vm-kernel.lock"):
        found = installed(paths)
        if found is not None:
            return found
        progress(f"unpacking {deb.name}")
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        run_tool(["dpkg-deb", "-x", str(deb), str(tmp)], "unpacking the VM kernel", TIMEOUT_S)
        versions = sorted(p.name for p in (tmp / "lib" / "modules").glob("*"))
        if not versions:
            raise EngineError(f"{deb.name} holds no kernel modules")
        progress("building the VM initramfs")
        initramfs.build(tmp / "lib" / "modules" / versions[-1], BUSYBOX, tmp / f"initrd-{versions[-1]}.img")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    found = installed(paths)
    if found is None:
        raise EngineError(f"the VM kernel in {root} is incomplete")
    return found
