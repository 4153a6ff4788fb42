"""Time, injected. Wall time is UTC nanoseconds since the epoch; monotonic time is for intervals only."""

from __future__ import annotations

import threading
import time
from typing import Protocol

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


class Clock(Protocol):
    def now_utc_ns(self) -> int:
        """Wall clock, UTC. May step (NTP fixing a Pi that booted without an RTC)."""
        ...

    def monotonic_ns(self) -> int:
        """Never steps; for timeouts, intervals and rates."""
        ...


class SystemClock:
    def now_utc_ns(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


class SteppableClock:
    """The system clock plus an offset a test can step, as NTP would step the wall clock.

    Thread-safe: recorders read it on their own threads while a test steps it.
    """

    def __init__(self, base: Clock | None = None) -> None:
        self._base = base or SystemClock()
        self._offset_ns = 0
        self._lock = threading.Lock()

    def step(self, delta_ns: int) -> None:
        with self._lock:
            self._offset_ns += delta_ns

    def now_utc_ns(self) -> int:
        with self._lock:
            return self._base.now_utc_ns() + self._offset_ns

    def monotonic_ns(self) -> int:
        return self._base.monotonic_ns()
