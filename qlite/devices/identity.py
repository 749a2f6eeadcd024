"""What a block device is: its name, size and the identities that survive
re-insertion (filesystem UUID, serial). Pure, over what the block-device
seam (Context.block_devices) reads from sysfs and blkid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qlite.errors import InvalidValue

if TYPE_CHECKING:
    from qlite.domain.context import BlockDevices

SECTOR = 512


@dataclass(frozen=True)
class BlockDevice:
    name: str  # kernel name: loop3, sdb1
    size: int  # bytes
    fs_uuid: str = ""
    fs_type: str = ""
    label: str = ""
    serial: str = ""
    major_minor: str = ""

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def ident(self) -> str:
        """The most stable identity it has: what ``assign``/``pair`` record."""
        if self.fs_uuid:
            return f"uuid:{self.fs_uuid}"
        if self.serial:
            return f"serial:{self.serial}"
        return f"dev:{self.name}"

    def matches(self, ident: str) -> bool:
        kind, _, value = ident.partition(":")
        return bool(value) and value == {"uuid": self.fs_uuid, "serial": self.serial, "dev": self.name}.get(kind)

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "fs_uuid": self.fs_uuid or None,
            "fs_type": self.fs_type or None,
            "label": self.label or None,
            "serial": self.serial or None,
            "ident": self.ident,
        }


def parse_ident(text: str) -> str:
    """A device identity given by the user: uuid:U, serial:S or dev:NAME."""
    kind, sep, value = text.partition(":")
    if not sep or kind not in ("uuid", "serial", "dev") or not value or any(c.isspace() for c in value):
        raise InvalidValue(f"device identity {text!r}: expected uuid:UUID, serial:SERIAL or dev:NAME")
    return text


def read_device(blocks: BlockDevices, name: str, props: dict[str, str] | None = None) -> BlockDevice | None:
    """The device NAME as it is now (None if it is gone or empty). PROPS are
    udev's properties when udevd runs; blkid fills in what they lack."""
    size = blocks.attribute(name, "size")
    if not size.isdigit() or int(size) == 0:
        return None
    props = dict(props or {})
    if "ID_FS_UUID" not in props:
        found = blocks.probe(f"/dev/{name}")
        props.setdefault("ID_FS_UUID", found.get("UUID", ""))
        props.setdefault("ID_FS_TYPE", found.get("TYPE", ""))
        props.setdefault("ID_FS_LABEL", found.get("LABEL", ""))
    serial = (
        props.get("ID_SERIAL_SHORT")
        or props.get("ID_SERIAL")
        or blocks.attribute(name, "device/serial")
        or blocks.attribute(name, "loop/backing_file")
    )
    return BlockDevice(
        name=name,
        size=int(size) * SECTOR,
        fs_uuid=props.get("ID_FS_UUID", ""),
        fs_type=props.get("ID_FS_TYPE", ""),
        label=props.get("ID_FS_LABEL", ""),
        serial=serial,
        major_minor=blocks.attribute(name, "dev"),
    )


def is_removable_candidate(blocks: BlockDevices, name: str) -> bool:
    """Block devices qlite offers: not ram/zram/device-mapper, and not a
    whole disk whose partitions are listed instead."""
    if name.startswith(("ram", "zram", "dm-", "sr", "fd", "nbd")):
        return False
    return not blocks.holders(name)
