"""A clock that moves only when a test moves it (the Clock seam of Context)."""

from __future__ import annotations

import time


class FakeClock:
    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now  # starts at the real time, then stands still
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds
