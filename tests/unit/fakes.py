"""Test doubles shared by the unit tests: a manual clock for the blocking operations."""

from __future__ import annotations

from xvmd.core.operations import Clock


class ManualClock:
    """Monotonic time that moves only when someone sleeps (or the test advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.start = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.time += seconds

    @property
    def elapsed(self) -> float:
        return self.time - self.start

    def clock(self) -> Clock:
        return Clock(self.now, self.sleep)
