"""What qlite measures, and the PCR-like chain it extends them into.

Components, in this fixed order:
1. ``qlite``: the installation (the qlite package, guest tools, the guest
   Containerfile and the template definitions);
2. ``binary:runsc``, ``binary:podman``, ``binary:qemu``;
3. ``runsc-config``;
4. ``policy``: the shipped and the admin's policy files;
5. ``template:<name>``: the image each template's current revision
   resolves to in the engine (sorted by name).

Each component's event digest is sha256("<name>\\0<digest>"); the chain
starts at 32 zero bytes and extends as a TPM PCR does:
pcr = sha256(pcr || event). The paths are configurable
($QLITE_HOME/aem/components.json), so tests measure copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from qlite.errors import InvalidValue
from qlite.paths import SHARE_DIR, Paths

ZERO = bytes(32)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Measurement:
    name: str
    digest: str  # hex sha256, or "absent"

    @property
    def event(self) -> bytes:
        return hashlib.sha256(f"{self.name}\0{self.digest}".encode()).digest()

    def as_json(self) -> dict:
        return asdict(self)


def extend(pcr: bytes, event: bytes) -> bytes:
    return hashlib.sha256(pcr + event).digest()


def chain(measurements: Iterable[Measurement]) -> bytes:
    pcr = ZERO
    for m in measurements:
        pcr = extend(pcr, m.event)
    return pcr


def changed(old: list[Measurement], new: list[Measurement]) -> list[tuple[str, str | None, str | None]]:
    """(component, old digest, new digest) for each component that differs,
    appeared or vanished, in measurement order."""
    before = {m.name: m.digest for m in old}
    after = {m.name: m.digest for m in new}
    names = [m.name for m in new] + [m.name for m in old if m.name not in after]
    return [(n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(roots: list[Path]) -> str:
    """A digest of every file under ROOTS: names and contents, in order."""
    h = hashlib.sha256()
    for root in roots:
        if root.is_file():
            files = [(root.name, root)]
        elif root.is_dir():
            files = sorted(
                (str(p.relative_to(root)), p) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )
        else:
            h.update(f"absent {root.name}\n".encode())
            continue
        h.update(f"root {root.name}\n".encode())
        for rel, p in files:
            h.update(f"{rel}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def default_components(paths: Paths) -> dict[str, list[str]]:
    """Component name -> the paths it covers, before the admin's overrides."""

    def which(name: str) -> str:
        return shutil.which(name) or f"/usr/bin/{name}"

    return {
        "qlite": [
            str(SHARE_DIR / "qlite"),
            str(paths.guest_dir),
            str(paths.guest_containerfile),
            str(paths.images_dir),
        ],
        "binary:runsc": [which("runsc")],
        "binary:podman": [which("podman")],
        "binary:qemu": [which("qemu-system-x86_64")],
        "runsc-config": [str(paths.runsc_config_dir)],
        "policy": [str(paths.shipped_policy_dir), str(paths.policy_dir)],
    }


def components(paths: Paths, config: Path) -> dict[str, list[str]]:
    out = default_components(paths)
    try:
        overrides = json.loads(config.read_text())
    except FileNotFoundError:
        return out
    except ValueError as exc:
        raise InvalidValue(f"{config}: not valid JSON: {exc}") from None
    for name, value in overrides.items():
        if name in out:
            out[name] = [value] if isinstance(value, str) else [str(v) for v in value]
    return out


def measure_files(paths: Paths, config: Path) -> list[Measurement]:
    out = []
    for name, roots in components(paths, config).items():
        rs = [Path(r) for r in roots]
        if name.startswith("binary:"):
            digest = file_digest(rs[0]) if rs[0].is_file() else "absent"
        else:
            digest = tree_digest(rs)
        out.append(Measurement(name, digest))
    return out
