"""Host-side work on a private volume's data: laying out /rw and copying it.

A private volume holds /rw; /home is the template's link to /rw/home, and
/rw/home/user is owned by the qube's ``user`` (uid 1000 in every template).
Root in the qube controls every entry of the volume, so everything here
goes through qlite.safepath, from the volume's own root directory, which
podman made and the qube cannot rename (it is the qube's /rw mount)."""

from __future__ import annotations

import os

from qlite.errors import EngineError
from qlite.safepath import UnsafePath, copy_tree, make_dirs, open_trusted_dir, opened


class PrivateVolumes:
    """The host's work on private volumes, as Context hands it out
    (ctx.private_volumes). HOME_UID owns /rw/home/user (the template's
    user) and ROOT_UID /rw/home; tests that run without root, where chown
    to another uid is refused, give their own uid for both."""

    def __init__(self, home_uid: int, root_uid: int = 0) -> None:
        self.home_uid, self.root_uid = home_uid, root_uid

    def init(self, mountpoint: str) -> None:
        init_private(mountpoint, self.home_uid, self.root_uid)

    def copy(self, src_mountpoint: str, dst_mountpoint: str) -> None:
        copy_private(src_mountpoint, dst_mountpoint)


def init_private(mountpoint: str, home_uid: int, root_uid: int = 0) -> None:
    """Make sure /rw/home/user exists; what is made gets its owner (home
    root 0755, user HOME_UID 0700). Whatever the qube put there already is
    left as it is, even a link: it is resolved only inside the sandbox."""
    with opened(open_trusted_dir(mountpoint)) as root:
        try:
            os.close(
                make_dirs(
                    root,
                    "home/user",
                    modes={0: 0o755, 1: 0o700},
                    owners={0: (root_uid, root_uid), 1: (home_uid, home_uid)},
                )
            )
        except UnsafePath:
            pass  # the qube made home or home/user something else: its own business


def copy_private(src_mountpoint: str, dst_mountpoint: str) -> None:
    """Copy one private volume's contents into another (empty) one, on
    descriptors only: links are copied as links, never followed, and FIFOs,
    sockets and device nodes are left out."""
    try:
        with opened(open_trusted_dir(src_mountpoint)) as src, opened(open_trusted_dir(dst_mountpoint)) as dst:
            copy_tree(src, dst)
    except (OSError, UnsafePath) as exc:
        raise EngineError(f"copying private data failed: {exc}") from None
