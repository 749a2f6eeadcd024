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
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from qlite.paths import Paths
from qlite.progress import Progress, file_lock
from qlite.runtime.command import run_tool
from qlite.safepath import UnsafePath, lstat_beneath, open_beneath, open_trusted_dir, opened, remove_beneath

PRIVATE_IMAGE = "private.img"
PRIVATE_LABEL = "qlite-private"
PRIVATE_SIZE_MIB = 2048
ROOT_SLACK_MIB = 256
TIMEOUT_S = 900


def root_disk_path(paths: Paths, image_id: str) -> Path:
    return paths.vm_disk_dir / f"{image_id[:20]}.img"


def tree_size_mib(root: Path) -> int:
    out = run_tool(["du", "-sxm", str(root)], "measuring the root filesystem", TIMEOUT_S)
    return int(out.split()[0])


def ensure_root_disk(paths: Paths, image_id: str, export: Callable[[str], None], progress: Progress) -> Path:
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
            run_tool(
                ["tar", "-x", "--numeric-owner", "-p", "-f", str(tar), "-C", str(tree)],
                "unpacking the image",
                TIMEOUT_S,
            )
            tar.unlink()
            # /home is the template's link into /rw.
            for d in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "rw"):
                (tree / d).mkdir(parents=True, exist_ok=True)
            size = tree_size_mib(tree) * 5 // 4 + ROOT_SLACK_MIB
            progress(f"writing the VM root disk ({size} MiB)")
            part = dst.with_suffix(".part")
            part.unlink(missing_ok=True)
            run_tool(
                ["mkfs.ext4", "-q", "-F", "-L", "qlite-root", "-d", str(tree), str(part), f"{size}M"],
                "making the VM root disk",
                TIMEOUT_S,
            )
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


def verify_private(volume_mountpoint: str) -> bool:
    """Whether the volume holds qlite's private disk (False: none yet).

    While it was a container qube, its root could put anything at
    private.img: a link to a host file or device would hand that to QEMU as
    a writable disk. Only a regular file with one link and qlite's label is
    taken; anything else there is refused. A VM qube itself never writes
    the volume's directory, so what is verified stays so."""
    with opened(open_trusted_dir(volume_mountpoint)) as root:
        st = lstat_beneath(root, PRIVATE_IMAGE)
        if st is None:
            return False
        if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and _has_private_label(root)):
            raise UnsafePath(
                f"{PRIVATE_IMAGE} in the private volume is not a disk qlite made: "
                f"rename /rw/{PRIVATE_IMAGE} in the qube (as a container qube) and start again"
            )
        return True


def ensure_private(volume_mountpoint: str, size_mib: int = PRIVATE_SIZE_MIB) -> Path:
    """The qube's private disk, made from the volume's files the first
    time (a container qube becoming a VM keeps its /rw), which then move
    into it."""
    img = private_image(volume_mountpoint)
    if verify_private(volume_mountpoint):
        return img
    with opened(open_trusted_dir(volume_mountpoint)) as root:
        vol = Path(volume_mountpoint)
        part = vol.parent / f".{vol.name}-{PRIVATE_IMAGE}.part"
        part.unlink(missing_ok=True)
        # The qube is halted, so nothing changes under mke2fs, which copies
        # links as links (lstat), never following them.
        run_tool(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                PRIVATE_LABEL,
                "-E",
                "root_owner=0:0",
                "-d",
                str(vol),
                str(part),
                f"{size_mib}M",
            ],
            "making the private disk",
            TIMEOUT_S,
        )
        os.replace(part, PRIVATE_IMAGE, dst_dir_fd=root)
        for name in os.listdir(root):
            if name != PRIVATE_IMAGE:
                remove_beneath(root, name)
    return img


def _has_private_label(root: int) -> bool:
    """Whether private.img's ext4 superblock carries qlite's volume label."""
    with opened(open_beneath(root, PRIVATE_IMAGE, os.O_RDONLY | os.O_NONBLOCK)) as fd:
        block = os.pread(fd, 1024, 1024)  # the superblock
    if len(block) < 136 or block[0x38:0x3A] != b"\x53\xef":  # the ext2/3/4 magic
        return False
    return block[0x78:0x88].rstrip(b"\0") == PRIVATE_LABEL.encode()


def create_overlay(root_disk: Path, overlay: Path) -> Path:
    overlay.unlink(missing_ok=True)
    run_tool(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(root_disk), str(overlay)],
        "making the per-boot overlay",
        TIMEOUT_S,
    )
    return overlay
