"""F3: a drive attached to a qube is mounted where the qube cannot plant a
link, and detach leaves no mount behind."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import podman_objects
from tests.hostile.conftest import as_root, as_user

pytestmark = pytest.mark.integration


@pytest.fixture
def drive(home):
    """A loop device with a small ext4 filesystem, detached at the end."""
    image = home.path / f"hostile-{uuid.uuid4().hex[:8]}.img"
    tree = home.path / f"tree-{image.stem}"
    tree.mkdir()
    (tree / "marker").write_text("on the drive\n")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "16M"], check=True, capture_output=True, timeout=60
    )
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    yield loop.removeprefix("/dev/")
    subprocess.run(["umount", "-l", loop], capture_output=True, timeout=30)
    subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=30)


def mounted_anywhere(dev: str) -> list[str]:
    majmin = Path(f"/sys/block/{dev}/dev").read_text().strip()
    return [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines() if ln.split()[2] == majmin]


@pytest.mark.parametrize("plant", ["symlink", "relative-symlink", "dir", "file", "fifo"])
def test_f3_the_qube_cannot_prepare_its_mount_point(home, canary, attacker, drive, plant):
    """Root in the qube tries to put something where the drive will be
    mounted: /mnt/removable is read-only to it, and attach then mounts the
    drive under the qube's own devices directory."""
    cmd = {
        "symlink": f"ln -s {canary.path} /mnt/removable/{drive}",
        "relative-symlink": f"ln -s ../../../../../../../..{canary.path} /mnt/removable/{drive}",
        "dir": f"mkdir /mnt/removable/{drive}",
        "file": f"echo x > /mnt/removable/{drive}",
        "fifo": f"mkfifo /mnt/removable/{drive}",
    }[plant]
    out = as_root(home, attacker, cmd)
    if plant == "fifo":
        # gVisor keeps a FIFO inside the sandbox: the host never sees it.
        assert out.returncode == 0
    else:
        assert out.returncode != 0 and "Read-only file system" in out.stderr
    assert not (home.path / "run" / "device-points" / attacker / drive).exists()
    home.run("device", "attach", attacker, drive, "--ro")
    where = mounted_anywhere(drive)
    assert where == [str(home.path / "run" / "devices" / attacker / drive)]
    if plant != "fifo":
        assert as_user(home, attacker, f"cat /mnt/removable/{drive}/marker").stdout == "on the drive\n"
    detached = home.run("device", "detach", drive, check=False)
    assert detached.returncode == 0, detached.stderr
    assert mounted_anywhere(drive) == []


def test_f3_a_read_write_attachment_stays_writable(home, canary, attacker, drive):
    """The read-only devices directory does not make the drive read-only."""
    home.run("device", "attach", attacker, drive)
    out = as_root(
        home,
        attacker,
        f"echo w > /mnt/removable/{drive}/written && cat /mnt/removable/{drive}/written; "
        f"ln -s {canary.path} /mnt/removable/{drive}/link",
    )
    assert out.stdout == "w\n", out.stderr
    home.run("device", "detach", drive)
    assert mounted_anywhere(drive) == []


def test_a_qube_stopped_with_a_drive_leaves_no_mount(home, canary, attacker, drive):
    home.run("device", "attach", attacker, drive, "--ro")
    home.run("kill", attacker)
    home.run("remove", "--force", attacker)
    assert mounted_anywhere(drive) == []
    assert not (home.path / "run" / "devices" / attacker).exists()
    assert not (home.path / "run" / "device-points" / attacker).exists()
    home.run("create", attacker, "--label", "red")  # for the fixture's own removal


def test_f4_aftermath_remove_cleans_up_whatever_state_the_daemon_died_in(home, canary, drive):
    """The daemon is killed while qubes run, one with a drive attached:
    remove --force still takes everything of theirs away."""
    home.run("daemon", "start")
    for name in ("deada", "deadb"):
        home.run("create", name, "--label", "red")
        home.run("start", name)
    home.run("device", "attach", "deada", drive)
    # What the qube's root leaves where the host will clean up (refused here).
    as_root(
        home,
        "deada",
        f"rm -f /run/qlite/rpc.sock; mkdir -p /run/qlite/rpc.sock/x /mnt/removable/junk; "
        f"ln -s {canary.path} /mnt/removable/{drive}/link",
    )
    home.run("shutdown", "--wait", "deada")
    home.run("start", "deada")
    home.run("device", "attach", "deada", drive)
    pid = int(home.run("daemon", "status").stdout.split("pid ")[1].rstrip(")\n"))
    os.kill(pid, signal.SIGKILL)
    proc = home.run("remove", "--force", "deada", "deadb", check=False)
    assert proc.returncode == 0, proc.stderr
    for name in ("deada", "deadb"):
        assert not any(podman_objects(f"qlite.qube={name}", f"qlite.home={home.hash}").values())
        for d in ("devices", "device-points", "rpc"):
            assert not (home.path / "run" / d / name).exists()
    assert mounted_anywhere(drive) == []
    assert [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(home.path) in ln] == []
    home.run("daemon", "stop", check=False)
