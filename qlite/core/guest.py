"""The guest-tools tree that the top-level Containerfile copies into every
template: the repository's guest/ folder, plus the modules qlite shares
with it (the RPC wire format, the agent channel and the frame codec under
both), so that one file serves both sides."""

from __future__ import annotations

import shutil
from pathlib import Path

import qlite.agent.channel
import qlite.agent.frames
import qlite.rpc.wire

GUEST_PACKAGE = Path("usr/lib/python3/dist-packages/qlite_guest")
# module file in qlite -> its path inside the guest tree
SHARED = {
    Path(qlite.rpc.wire.__file__): GUEST_PACKAGE / "wire.py",
    Path(qlite.agent.channel.__file__): GUEST_PACKAGE / "channel.py",
    Path(qlite.agent.frames.__file__): GUEST_PACKAGE / "frames.py",
}


def guest_files(guest_dir: Path) -> list[tuple[str, Path]]:
    """(path inside the guest tree, source file) for every guest file."""
    out = [
        (str(p.relative_to(guest_dir)), p)
        for p in sorted(guest_dir.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    out += [(str(dst), src) for src, dst in SHARED.items()]
    return sorted(out)


def assemble(guest_dir: Path, dst: Path) -> Path:
    """Lay the guest tree out in DST (a build context); return DST."""
    for rel, src in guest_files(guest_dir):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dst
