"""The one seam through which qlite looks at the host's block devices:
the kernel's view in sysfs (/sys/class/block) and blkid's probe of what
is on them. Only reads: attaching goes through qlite.host.mounts."""

from __future__ import annotations

import os
from pathlib import Path

from qlite.errors import QliteError
from qlite.runtime.command import run_tool

SYS_BLOCK = Path("/sys/class/block")
BLKID_TIMEOUT_S = 30


def parse_blkid_export(text: str) -> dict[str, str]:
    """``blkid -o export`` output (KEY=value lines) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isupper():
            out[key] = value
    return out


class HostBlockDevices:
    """The block devices the kernel lists under ROOT."""

    def __init__(self, root: Path = SYS_BLOCK) -> None:
        self.root = root

    def names(self) -> list[str]:
        """Every block device's kernel name, sorted (none without sysfs)."""
        try:
            return sorted(os.listdir(self.root))
        except OSError:
            return []

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def attribute(self, name: str, attr: str) -> str:
        """NAME's sysfs attribute ATTR ("size", "dev", "device/serial"),
        stripped; "" when it has none (a device can vanish at any read)."""
        try:
            return (self.root / name / attr).read_text().strip()
        except OSError:
            return ""

    def holders(self, name: str) -> list[str]:
        """What the kernel has stacked on NAME (device-mapper, md, ...)."""
        try:
            return sorted(os.listdir(self.root / name / "holders"))
        except OSError:
            return []

    def probe(self, path: str) -> dict[str, str]:
        """What blkid finds on PATH, read from the device itself (UUID,
        TYPE, LABEL...); {} when it finds nothing or cannot look."""
        try:
            proc = run_tool(["blkid", "-p", "-o", "export", path], f"probing {path}", BLKID_TIMEOUT_S, check=False)
        except QliteError:
            return {}
        return parse_blkid_export(proc.stdout)
