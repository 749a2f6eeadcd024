"""Pure parts of device handling: identities, blkid output, mount options
and the host's mount table."""

from __future__ import annotations

import pytest

from qlite.devices.identity import BlockDevice, parse_ident
from qlite.devices.manager import mount_options
from qlite.errors import InvalidValue
from qlite.host.blockdev import parse_blkid_export
from qlite.host.mounts import host_mounts

DEV = BlockDevice(name="sdb1", size=1 << 30, fs_uuid="1234-ABCD", fs_type="vfat", label="STICK", serial="XYZ9")


@pytest.mark.parametrize(
    ("dev", "ident"),
    [
        (DEV, "uuid:1234-ABCD"),
        (BlockDevice(name="sdc", size=1, serial="S1"), "serial:S1"),
        (BlockDevice(name="loop4", size=1), "dev:loop4"),
    ],
)
def test_ident_prefers_the_filesystem_uuid_then_the_serial(dev, ident):
    assert dev.ident == ident
    assert dev.matches(ident)


@pytest.mark.parametrize(
    ("ident", "matches"),
    [
        ("uuid:1234-ABCD", True),
        ("serial:XYZ9", True),
        ("dev:sdb1", True),
        ("uuid:1234-abcd", False),
        ("serial:", False),
        ("dev:sdb", False),
        ("label:STICK", False),
        ("", False),
    ],
)
def test_matches_compares_one_identity_exactly(ident, matches):
    assert DEV.matches(ident) is matches


def test_as_json_pins_the_keys():
    assert set(DEV.as_json()) == {"name", "path", "size", "fs_uuid", "fs_type", "label", "serial", "ident"}
    assert DEV.as_json()["path"] == "/dev/sdb1"
    assert BlockDevice(name="loop1", size=5).as_json()["fs_uuid"] is None


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "DEVNAME=/dev/loop0\nUUID=ab-cd\nTYPE=ext4\nLABEL=my disk\n",
            {"DEVNAME": "/dev/loop0", "UUID": "ab-cd", "TYPE": "ext4", "LABEL": "my disk"},
        ),
        ("UUID=x=y\n", {"UUID": "x=y"}),
        ("garbage\nlower=case\n\n", {}),
        ("", {}),
    ],
)
def test_parse_blkid_export(text, want):
    assert parse_blkid_export(text) == want


@pytest.mark.parametrize("text", ["uuid:1-2", "serial:ABC", "dev:loop3"])
def test_parse_ident_accepts(text):
    assert parse_ident(text) == text


@pytest.mark.parametrize("text", ["1-2", "uuid:", "label:x", "uuid:a b", ":x", "dev"])
def test_parse_ident_rejects_with_one_line(text):
    with pytest.raises(InvalidValue) as exc:
        parse_ident(text)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("ro", "allow_exec", "want"),
    [
        (False, False, "nodev,nosuid,noexec,rw"),
        (True, False, "nodev,nosuid,noexec,ro"),
        (False, True, "nodev,nosuid,rw"),
        (True, True, "nodev,nosuid,ro"),
    ],
)
def test_mount_options_are_never_dev_or_suid(ro, allow_exec, want):
    assert mount_options(ro, allow_exec) == want


def test_host_mounts_by_device_number():
    info = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 7:3 / /media/my\\040stick rw - vfat /dev/loop3 rw\n"
        "41 22 7:3 / /mnt/again rw - vfat /dev/loop3 rw\n"
        "short line\n"
    )
    assert host_mounts(info) == {"8:1": ["/"], "7:3": ["/media/my stick", "/mnt/again"]}


def test_unassigning_what_is_not_assigned_says_so(ctx):
    from qlite.core.qubes import QubeManager
    from qlite.devices.manager import DeviceManager
    from qlite.errors import NotFound

    from .conftest import insert_row

    qm = QubeManager(ctx)
    insert_row(qm, "work")
    dm = DeviceManager(ctx, qm)
    dm.assign("work", "uuid:1234")
    dm.unassign("work", "uuid:1234")
    with pytest.raises(NotFound, match="not assigned"):
        dm.unassign("work", "uuid:1234")
