"""The host's clocks, as the Clock seam (qlite.domain.context.Clock) gives them."""

from __future__ import annotations

import time


class SystemClock:
    """Wall time for what is remembered across processes (approvals, rule
    expiry, creation times); monotonic time for deadlines within one."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
