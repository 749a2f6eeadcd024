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
import tempfile
from pathlib import Path

from qlite.paths import Paths
from qlite.progress import Progress, file_lock
from qlite.runtime.command import run_tool

PRIVATE_IMAGE = "private.img"
PRIVATE_SIZE_MIB = 2048
ROOT_SLACK_MIB = 256
TIMEOUT_S = 900


def root_disk_path(paths: Paths, image_id: str) -> Path:
    return paths.vm_disk_dir / f"{image_id[:20]}.img"


def tree_size_mib(root: Path) -> int:
    out = run_tool(["du", "-sxm", str(root)], "measuring the root filesystem", TIMEOUT_S)
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
            run_tool(["tar", "-x", "--numeric-owner", "-p", "-f", str(tar), "-C", str(tree)], "unpacking the image",
                     TIMEOUT_S)
            tar.unlink()
            for d in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "rw", "home/user"):
                (tree / d).mkdir(parents=True, exist_ok=True)
            size = tree_size_mib(tree) * 5 // 4 + ROOT_SLACK_MIB
            progress(f"writing the VM root disk ({size} MiB)")
            part = dst.with_suffix(".part")
            part.unlink(missing_ok=True)
            run_tool(["mkfs.ext4", "-q", "-F", "-L", "qlite-root", "-d", str(tree), str(part), f"{size}M"],
                     "making the VM root disk", TIMEOUT_S)
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
    run_tool(["mkfs.ext4", "-q", "-F", "-L", "qlite-private", "-E", "root_owner=0:0", "-d", str(vol), str(part),
          f"{size_mib}M"], "making the private disk", TIMEOUT_S)
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
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(root_disk), str(overlay)],
         "making the per-boot overlay", TIMEOUT_S)
    return overlay
