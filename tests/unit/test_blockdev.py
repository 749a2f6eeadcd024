"""Block devices as qlite sees them: what a device is read as from sysfs
and blkid (over a table of fake drives), the DeviceManager's lookups over
that table, and the host's seam over a sysfs-like tree of the test's own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qlite.core.qubes import QubeManager
from qlite.devices.identity import BlockDevice, is_removable_candidate, read_device
from qlite.errors import NotFound, StateError
from qlite.host.blockdev import HostBlockDevices

from .conftest import insert_row
from .fake_blockdev import FakeBlockDevices

MIB = 1 << 20
UUID = "1234-ABCD"


def table(*drives: tuple[str, dict]) -> FakeBlockDevices:
    blocks = FakeBlockDevices()
    for name, options in drives:
        blocks.add(name, **options)
    return blocks


# (case, drives, the name read, udev's properties, what it is read as, whether blkid ran)
READS = [
    (
        "a filesystem blkid finds",
        [("sdb1", {"fs_uuid": UUID, "label": "STICK", "fs_type": "vfat", "serial": "S9", "major_minor": "8:17"})],
        "sdb1",
        None,
        BlockDevice("sdb1", 16 * MIB, UUID, "vfat", "STICK", "S9", "8:17"),
        True,
    ),
    ("no medium", [("sdc", {"size_mib": 0})], "sdc", None, None, False),
    ("gone", [], "sdd", None, None, False),
    (
        "udev's properties spare blkid",
        [("sde", {"fs_uuid": "not-read", "serial": "sysfs-serial"})],
        "sde",
        {"ID_FS_UUID": "from-udev", "ID_FS_TYPE": "ext4", "ID_SERIAL_SHORT": "udev-serial"},
        BlockDevice("sde", 16 * MIB, "from-udev", "ext4", "", "udev-serial", "7:5"),
        False,
    ),
    (
        "a loop device's backing file as its serial",
        [("loop3", {"fs_type": "", "attributes": {"loop/backing_file": "/srv/disk.img"}, "major_minor": "7:3"})],
        "loop3",
        None,
        BlockDevice("loop3", 16 * MIB, "", "", "", "/srv/disk.img", "7:3"),
        True,
    ),
    (
        "no identity but its name",
        [("sdf", {"fs_type": "", "size_mib": 2})],
        "sdf",
        None,
        BlockDevice("sdf", 2 * MIB, major_minor="7:5"),
        True,
    ),
]


@pytest.mark.parametrize(
    ("drives", "name", "props", "want", "probed"), [c[1:] for c in READS], ids=[c[0] for c in READS]
)
def test_read_device(drives, name, props, want, probed):
    blocks = table(*drives)
    assert read_device(blocks, name, props) == want
    assert blocks.probed == ([f"/dev/{name}"] if probed else [])


@pytest.mark.parametrize(
    ("name", "holders", "offered"),
    [
        ("sdb1", (), True),
        ("loop0", (), True),
        ("sdb", ("dm-0",), False),  # its device-mapper view is what is offered
        *((name, (), False) for name in ("ram0", "zram0", "dm-0", "sr0", "fd0", "nbd0")),
    ],
)
def test_is_removable_candidate(name, holders, offered):
    assert is_removable_candidate(table((name, {"holders": holders})), name) is offered


@pytest.fixture
def devices(ctx, blocks):
    blocks.add("sdb1", fs_uuid=UUID, serial="S9")
    blocks.add("sdc", size_mib=0)  # a card reader with no card
    blocks.add("zram0")
    blocks.add("sda", fs_type="LVM2_member", holders=("dm-0",))
    blocks.add("dm-0")
    blocks.add("loop2", fs_type="")
    return QubeManager(ctx).devices


def test_the_devices_offered_are_the_candidates_with_a_medium(devices):
    assert [d.name for d in devices.devices()] == ["loop2", "sdb1"]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("sdb1", "sdb1"),
        ("/dev/sdb1", "sdb1"),
        (f"uuid:{UUID}", "sdb1"),
        ("serial:S9", "sdb1"),
        ("dev:loop2", "loop2"),
    ],
)
def test_find(devices, text, found):
    assert devices.find(text).name == found


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sdz", "no such block device: 'sdz' (see 'qlite device list')"),
        ("../sdb1", "no such block device: '../sdb1' (see 'qlite device list')"),
        ("sdc", "block device sdc has no medium"),
        ("uuid:FFFF-0000", "no device uuid:FFFF-0000 is present"),
    ],
)
def test_find_names_what_is_missing(devices, text, message):
    with pytest.raises(NotFound) as exc:
        devices.find(text)
    assert str(exc.value) == message


def test_a_device_the_host_stacked_something_on_is_not_given_to_a_qube(ctx, devices):
    insert_row(QubeManager(ctx), "work")
    with pytest.raises(StateError) as exc:
        devices.attach("work", "sda")
    assert str(exc.value) == "sda is in use on the host (by dm-0)"
    assert devices.attachment("sda") is None


def test_an_attached_device_that_went_is_gone(ctx, blocks, devices):
    for name in ("sdb1", "loop2"):
        ctx.store.execute(
            "INSERT INTO device_attachments(device, qube, ident, read_only, how, target, attached_at) "
            "VALUES(?,?,?,?,?,?,?)",
            (name, "work", f"dev:{name}", 0, "block", f"dev-{name}", 0.0),
        )
    assert devices.gone() == []
    blocks.remove("sdb1")
    assert devices.gone() == ["sdb1"]


# -- the host's seam, over a tree laid out like /sys/class/block ------------------------------


@pytest.fixture
def sysfs(tmp_path) -> Path:
    root = tmp_path / "class-block"
    for path, text in {
        "sdb/size": "2048\n",
        "sdb/dev": "8:16\n",
        "sdb/device/serial": "  S9 \n",
        "sda/size": "4096\n",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "sda" / "holders" / "dm-0").mkdir(parents=True)
    (root / "sdb" / "holders").mkdir()
    return root


def test_the_host_seam_reads_sysfs(sysfs):
    blocks = HostBlockDevices(sysfs)
    assert blocks.names() == ["sda", "sdb"]
    assert (blocks.exists("sdb"), blocks.exists("sdz")) == (True, False)
    assert [blocks.attribute("sdb", a) for a in ("size", "dev", "device/serial", "loop/backing_file")] == [
        "2048",
        "8:16",
        "S9",
        "",
    ]
    assert blocks.attribute("sdz", "size") == ""
    assert (blocks.holders("sda"), blocks.holders("sdb"), blocks.holders("sdz")) == (["dm-0"], [], [])
    assert HostBlockDevices(sysfs / "absent").names() == []


def test_blkid_that_finds_nothing_or_is_missing_says_nothing(tmp_path, monkeypatch):
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(1 << 16))
    blocks = HostBlockDevices(tmp_path)
    assert blocks.probe(str(blank)) == {}
    monkeypatch.setenv("PATH", str(tmp_path))
    assert blocks.probe(str(blank)) == {}


@pytest.mark.skipif(not (shutil.which("blkid") and shutil.which("mkfs.ext4")), reason="needs blkid and mkfs.ext4")
def test_blkid_reads_the_filesystem_on_a_device(tmp_path):
    image = tmp_path / "fs.img"
    uuid = "0f3c2a7e-9b1d-4c55-8e2a-3d6f1b2c4e5f"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "backup", "-U", uuid, str(image), "1M"],
        check=True,
        timeout=60,
        capture_output=True,
    )
    found = HostBlockDevices(tmp_path).probe(str(image))
    assert (found["UUID"], found["TYPE"], found["LABEL"]) == (uuid, "ext4", "backup")
