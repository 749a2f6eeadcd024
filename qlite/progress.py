"""Long-running host commands whose output is shown as progress, and the
file locks that serialise them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Callable, Iterator

Progress = Callable[[str], None]
TAIL_LINES = 20


def run_streamed(cmd: list[str], progress: Progress, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run CMD, passing each line of its output (stdout and stderr) to
    PROGRESS. Returns the exit code and the last non-empty line, for the
    one-line error a failure becomes. Raises FileNotFoundError if CMD's
    program is missing."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        stdin=subprocess.DEVNULL,
    )
    tail: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
        if line.strip():
            tail = (tail + [line.strip()])[-TAIL_LINES:]
        progress(line)
    return proc.wait(), tail[-1] if tail else "no output"


@contextlib.contextmanager
def file_lock(path: os.PathLike | str) -> Iterator[None]:
    """An exclusive flock on PATH (created if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
