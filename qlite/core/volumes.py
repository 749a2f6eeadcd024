"""Host-side work on a private volume's data: laying out /rw and copying it.

A private volume holds /rw; /home/user is /rw/home/user, owned by the
qube's ``user`` (uid 1000 in every template)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from qlite.core.spec import USER_UID
from qlite.errors import EngineError


def home_dir(mountpoint: str) -> Path:
    return Path(mountpoint) / "home" / "user"


def init_private(mountpoint: str) -> Path:
    """Make sure /rw/home/user exists with the right owner; return it."""
    home = home_dir(mountpoint)
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chown(home.parent, 0, 0)
        os.chmod(home.parent, 0o755)
        os.chown(home, USER_UID, USER_UID)
    return home


def copy_private(src_mountpoint: str, dst_mountpoint: str) -> None:
    """Copy one private volume's contents into another (empty) one."""
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{src_mountpoint}/.", f"{dst_mountpoint}/"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise EngineError(f"copying private data failed: {proc.stderr.strip()}")
