"""Owner tags for disposables: "pid:start_time".

The start time (in clock ticks since boot, from /proc/PID/stat) makes the
tag immune to PID reuse: a different process with the same PID has a
different start time, so its disposables are recognised as orphaned.
"""

from __future__ import annotations

import os
import re

OWNER_RE = re.compile(r"([0-9]+):([0-9]+)")


def process_start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(b")", 1)[1].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def current_owner() -> str:
    pid = os.getpid()
    return f"{pid}:{process_start_ticks(pid)}"


def parse_owner(owner: str) -> tuple[int, int] | None:
    m = OWNER_RE.fullmatch(owner)
    return (int(m.group(1)), int(m.group(2))) if m else None


def owner_alive(owner: str | None) -> bool:
    """True if the process that OWNER names still runs."""
    if not owner:
        return False
    parsed = parse_owner(owner)
    if parsed is None:
        return False
    pid, ticks = parsed
    return process_start_ticks(pid) == ticks
