"""The RPC audit log: one JSON object per line, appended, never rewritten."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path

_lock = threading.Lock()


def append(path: Path, record: dict) -> None:
    line = json.dumps({"time": round(time.time(), 3), **record}, separators=(",", ":")) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def read(path: Path, last: int | None = None) -> list[dict]:
    """The log's records, oldest first (only the LAST ones if given)."""
    if not path.exists():
        return []
    lines: deque[str] = deque(maxlen=last) if last is not None else deque()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                lines.append(line)
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"malformed": line.strip()[:200]})
    return out
