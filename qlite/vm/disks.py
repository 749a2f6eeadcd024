"""The disks of a VM qube.

- Root: the template image's filesystem, exported once per image into a
  read-only ext4 image (``mkfs.ext4 -d``) under the home's vm/disks.
- Overlay: a qcow2 over the root disk for one boot, deleted at shutdown.
- Private: an ext4 image, ``private.img`` in the qube's private volume
  (so clone, remove and reconciliation treat it as they do any volume).
  The host writes it only when it makes it; it never mounts one a VM has
  written, since that would hand the host kernel a filesystem the qube
  controls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from qlite.errors import EngineError, EngineUnavailable
from qlite.paths import Paths
from qlite.progress import Progress, file_lock

PRIVATE_IMAGE = "private.img"
PRIVATE_SIZE_MIB = 2048
ROOT_SLACK_MIB = 256
TIMEOUT_S = 900


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise EngineUnavailable(f"{what}: {cmd[0]} is not installed (run setup.sh)") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"{what}: {cmd[0]} took over {TIMEOUT_S}s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise EngineError(f"{what}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout


def root_disk_path(paths: Paths, image_id: str) -> Path:
    return paths.vm_disk_dir / f"{image_id[:20]}.img"


def tree_size_mib(root: Path) -> int:
    out = _run(["du", "-sxm", str(root)], "measuring the root filesystem")
    return int(out.split()[0])


def ensure_root_disk(paths: Paths, image_id: str, export: callable, progress: Progress) -> Path:
    """The root disk of IMAGE_ID, exported if missing. EXPORT(tar_path)
    writes the image's filesystem as a tar (the engine does that)."""
    dst = root_disk_path(paths, image_id)
    if dst.is_file():
        return dst
    paths.vm_disk_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(paths.vm_disk_dir / ".lock"):
        if dst.is_file():
            return dst
        with tempfile.TemporaryDirectory(dir=paths.vm_disk_dir, prefix=".export-") as tmp:
            tar, tree = Path(tmp) / "rootfs.tar", Path(tmp) / "tree"
            progress(f"exporting template image {image_id[:12]} for VM qubes")
            export(str(tar))
            tree.mkdir()
            _run(["tar", "-x", "--numeric-owner", "-p", "-f", str(tar), "-C", str(tree)], "unpacking the image")
            tar.unlink()
            for d in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "rw", "home/user"):
                (tree / d).mkdir(parents=True, exist_ok=True)
            size = tree_size_mib(tree) * 5 // 4 + ROOT_SLACK_MIB
            progress(f"writing the VM root disk ({size} MiB)")
            part = dst.with_suffix(".part")
            part.unlink(missing_ok=True)
            _run(["mkfs.ext4", "-q", "-F", "-L", "qlite-root", "-d", str(tree), str(part), f"{size}M"],
                 "making the VM root disk")
            os.chmod(part, 0o444)
            os.replace(part, dst)
    return dst


def prune_root_disks(paths: Paths, keep_ids: set[str]) -> list[str]:
    """Delete root disks of images no template here uses any more."""
    keep = {root_disk_path(paths, i).name for i in keep_ids}
    removed = []
    for p in paths.vm_disk_dir.glob("*.img") if paths.vm_disk_dir.is_dir() else []:
        if p.name not in keep:
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def private_image(volume_mountpoint: str) -> Path:
    return Path(volume_mountpoint) / PRIVATE_IMAGE


def ensure_private(volume_mountpoint: str, size_mib: int = PRIVATE_SIZE_MIB) -> Path:
    """The qube's private disk, made from the volume's files the first
    time (a container qube becoming a VM keeps its /rw), which then move
    into it."""
    img = private_image(volume_mountpoint)
    if img.is_file():
        return img
    vol = Path(volume_mountpoint)
    part = vol.parent / f".{vol.name}-{PRIVATE_IMAGE}.part"
    part.unlink(missing_ok=True)
    _run(["mkfs.ext4", "-q", "-F", "-L", "qlite-private", "-E", "root_owner=0:0", "-d", str(vol), str(part),
          f"{size_mib}M"], "making the private disk")
    os.replace(part, img)
    for child in vol.iterdir():
        if child.name == PRIVATE_IMAGE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return img


def create_overlay(root_disk: Path, overlay: Path) -> Path:
    overlay.unlink(missing_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(root_disk), str(overlay)],
         "making the per-boot overlay")
    return overlay
