"""A stand-in for qlite.host.blockdev: a table of block devices, with their
sysfs attributes and what blkid would find on each. Adding or removing a
device here is a drive going in or out."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeDrive:
    attributes: dict[str, str]  # sysfs attributes by path under the device: "size", "dev", "device/serial"
    filesystem: dict[str, str]  # blkid's UUID, TYPE, LABEL
    holders: list[str] = field(default_factory=list)


@dataclass
class FakeBlockDevices:
    drives: dict[str, FakeDrive] = field(default_factory=dict)  # by kernel name
    probed: list[str] = field(default_factory=list)  # the paths blkid was run on

    def add(
        self,
        name: str,
        *,
        size_mib: int = 16,
        fs_uuid: str = "",
        label: str = "",
        fs_type: str = "ext4",
        serial: str = "",
        major_minor: str = "7:5",
        holders: tuple[str, ...] = (),
        attributes: dict[str, str] | None = None,
    ) -> None:
        attrs = {"size": str(size_mib * 2048), "dev": major_minor}
        if serial:
            attrs["device/serial"] = serial
        attrs.update(attributes or {})
        self.drives[name] = FakeDrive(attrs, {"UUID": fs_uuid, "TYPE": fs_type, "LABEL": label}, list(holders))

    def remove(self, name: str) -> None:
        del self.drives[name]

    # -- the seam ----------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.drives)

    def exists(self, name: str) -> bool:
        return name in self.drives

    def attribute(self, name: str, attr: str) -> str:
        drive = self.drives.get(name)
        return drive.attributes.get(attr, "") if drive else ""

    def holders(self, name: str) -> list[str]:
        drive = self.drives.get(name)
        return list(drive.holders) if drive else []

    def probe(self, path: str) -> dict[str, str]:
        self.probed.append(path)
        drive = self.drives.get(path.removeprefix("/dev/"))
        return dict(drive.filesystem) if drive else {}
