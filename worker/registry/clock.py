"""Time as the registry sees it: timestamps, deadlines, waits and timers through one injectable object.

Every place the registry waits or times something (download retries and deadlines, lock waits, scan
deadlines, the usage flush timer, stale-file ages) asks a ``Clock``, so tests drive time instead of
sleeping and asserting on a wall clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: cancels a timer set by ``Clock.call_later`` (a no-op once it has run)
Cancel = Callable[[], None]


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch: what the registry records (``last_used``...)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: what deadlines are measured on."""

    def sleep(self, seconds: float) -> None:
        """Wait (retry backoff, lock polling)."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancel:
        """Run ``callback`` once, ``delay_s`` from now, on another thread; returns its cancel function."""


class SystemClock:
    """The real clock: ``time`` and daemon ``threading.Timer`` threads."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancel:
        timer = threading.Timer(delay_s, callback)
        timer.daemon = True
        timer.start()
        return timer.cancel


SYSTEM_CLOCK: Clock = SystemClock()


@dataclass(frozen=True)
class Deadline:
    """A point on ``clock``'s monotonic time after which work stops (hashing, a download)."""

    clock: Clock
    at: float

    @classmethod
    def after(cls, clock: Clock, seconds: float | None) -> Deadline | None:
        """``seconds`` from now; None (no deadline) for None."""
        return None if seconds is None else cls(clock, clock.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - self.clock.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0
