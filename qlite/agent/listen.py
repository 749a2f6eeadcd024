"""The host's end of an agent channel: a socket only root can reach."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def listen_private(path: Path, backlog: int = 64) -> socket.socket:
    """A Unix socket at PATH that only root can connect to. PATH's
    directory is the host's alone, or bound read-only into a qube."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chmod(path, 0o600)
    s.listen(backlog)
    return s
