"""The guest-tools tree that the top-level Containerfile copies into every
template: the repository's guest/ folder, plus the modules qlite shares
with it (the RPC wire format, the agent channel and the frame codec under
both), so that one file serves both sides, plus the programs compiled from
guest-src/ (the container qubes' agent, in C: a Python one would cost every
idle qube more than the rest of it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import qlite.agent.channel
import qlite.agent.frames
import qlite.rpc.wire
from qlite.errors import EngineError, EngineUnavailable
from qlite.runtime.command import run_tool

GUEST_PACKAGE = Path("usr/lib/python3/dist-packages/qlite_guest")
# module file in qlite -> its path inside the guest tree
SHARED = {
    Path(qlite.rpc.wire.__file__): GUEST_PACKAGE / "wire.py",
    Path(qlite.agent.channel.__file__): GUEST_PACKAGE / "channel.py",
    Path(qlite.agent.frames.__file__): GUEST_PACKAGE / "frames.py",
}
# program inside the guest tree -> its C source in guest-src/ (next to guest/)
COMPILED = {
    Path("usr/lib/qlite/qlite-agent"): "qlite-agent.c",
    # The RPC client's common case: a Python start inside gVisor costs more
    # than the rest of a call. It runs usr/lib/qlite/qrexec-client-vm.py
    # for the rest.
    Path("usr/bin/qrexec-client-vm"): "qrexec-client.c",
}
# Static: one binary runs in every template, whatever its libc.
CC = ["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"]
COMPILE_TIMEOUT_S = 120.0


def source_dir(guest_dir: Path) -> Path:
    return guest_dir.parent / "guest-src"


def guest_files(guest_dir: Path) -> list[tuple[str, Path]]:
    """(path inside the guest tree, source file) for every guest file. A
    compiled program is listed under its own path with its C source, so
    that a change to the source is a change to the guest tree."""
    out = [
        (str(p.relative_to(guest_dir)), p)
        for p in sorted(guest_dir.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    out += [(str(dst), src) for src, dst in SHARED.items()]
    out += [(str(dst), source_dir(guest_dir) / src) for dst, src in COMPILED.items()]
    return sorted(out)


def compile_program(src: Path, target: Path) -> None:
    """SRC (C) compiled into the executable TARGET (mode 0755)."""
    try:
        run_tool([*CC, "-o", str(target), str(src)], f"compiling {src.name}", COMPILE_TIMEOUT_S, complaint="first")
    except EngineUnavailable:
        raise
    except EngineError as exc:
        raise EngineError(f"{exc} (the guest tools build with gcc and libc6-dev: run ./setup.sh)") from None
    os.chmod(target, 0o755)


def assemble(guest_dir: Path, dst: Path) -> Path:
    """Lay the guest tree out in DST (a build context); return DST."""
    compiled = {str(p) for p in COMPILED}
    for rel, src in guest_files(guest_dir):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel in compiled:
            compile_program(src, target)
        else:
            shutil.copy2(src, target)
    return dst
