"""Time as a dependency: every wait of the worker reads and spends time through a ``Clock``.

Readiness polling, retry backoff, the progress relay and the start-up deadline take a ``Clock`` (default
``SYSTEM_CLOCK``), so tests drive time instead of sleeping through it and assert what was waited, never how
long a run took. Socket timeouts stay real: they are the operating system's, passed to each request.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, durations)."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (compared with file modification times)."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``event`` is set, whichever comes first; True when it was set."""


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
