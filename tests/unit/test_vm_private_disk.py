"""A VM qube's private disk is made from the volume, or taken only if it is
the disk qlite made: never a link or special file a container qube planted."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from qlite.safepath import UnsafePath
from qlite.vm import disks

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs (setup.sh installs it)")


@pytest.fixture
def volume(tmp_path):
    """A podman-like volume (NAME/_data) beside a host canary."""
    data = tmp_path / "vol" / "_data"
    (data / "home" / "user").mkdir(parents=True)
    (data / "home" / "user" / "notes").write_text("mine")
    canary = tmp_path / "canary"
    canary.write_bytes(b"host file")
    return data, canary


def test_the_disk_is_made_from_the_volume_and_the_files_move_into_it(volume):
    data, _ = volume
    img = disks.ensure_private(str(data), size_mib=16)
    assert img == data / "private.img" and stat.S_ISREG(img.lstat().st_mode)
    assert sorted(os.listdir(data)) == ["private.img"]
    assert disks.ensure_private(str(data), size_mib=16) == img  # taken as it is the second time


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo", "dir", "unlabelled"])
def test_a_planted_private_img_is_refused(volume, plant):
    data, canary = volume
    target = data / "private.img"
    if plant == "symlink":
        target.symlink_to(canary)
    elif plant == "hardlink":
        inside = data / "other.img"
        inside.write_bytes(b"\0" * 4096)
        os.link(inside, target)
    elif plant == "fifo":
        os.mkfifo(target)
    elif plant == "dir":
        target.mkdir()
    else:
        target.write_bytes(b"\0" * 4096)
    with pytest.raises(UnsafePath):
        disks.ensure_private(str(data), size_mib=16)
    assert canary.read_bytes() == b"host file"
    assert (data / "home" / "user" / "notes").read_text() == "mine"  # nothing moved or removed


def test_a_labelled_disk_with_a_second_link_is_refused(volume):
    data, _ = volume
    img = disks.ensure_private(str(data), size_mib=16)
    os.link(img, data.parent / "elsewhere.img")
    with pytest.raises(UnsafePath):
        disks.ensure_private(str(data), size_mib=16)
