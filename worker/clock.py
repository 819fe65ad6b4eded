"""Time as a dependency: every wait of the worker and the registry reads and spends time through a ``Clock``.

Readiness polling, retry backoff, the progress relay, the start-up deadline, download retries and
deadlines, lock waits, scan deadlines and the registry's usage flush timer take a ``Clock`` (default
``SYSTEM_CLOCK``), so tests drive time instead of sleeping through it and assert what was waited, never how
long a run took. Socket timeouts stay real: they are the operating system's, passed to each request.
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
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, durations)."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (what the registry records; compared with file times)."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``event`` is set, whichever comes first; True when it was set."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancel:
        """Run ``callback`` once, ``delay_s`` from now, on another thread; returns its cancel function."""


class SystemClock:
    """The real clock: ``time`` and daemon ``threading.Timer`` threads."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)

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
