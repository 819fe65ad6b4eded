"""A clock the test moves by hand: deadlines, backoff waits, lock polling and timers without real time."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ManualClock:
    """``worker.registry.clock.Clock`` whose time moves only by ``advance`` (or ``sleep``, which advances).

    Timers set with ``call_later`` run in the thread that advances past them, in time order.
    ``monotonic_step`` makes every ``monotonic()`` read move time on by that much: work that checks a
    deadline in a loop then meets it after a known number of checks.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, monotonic_step: float = 0.0) -> None:
        self.wall = start
        self.mono = 0.0
        self.monotonic_step = monotonic_step
        self.slept: list[float] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._seq = 0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        value = self.mono
        if self.monotonic_step:
            self.advance(self.monotonic_step)
        return value

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._seq += 1
            timer = (self.mono + delay_s, self._seq, callback)
            self._timers.append(timer)

        def cancel() -> None:
            with self._lock:
                if timer in self._timers:
                    self._timers.remove(timer)

        return cancel

    @property
    def pending_timers(self) -> list[float]:
        """When each timer still set will run (monotonic seconds)."""
        with self._lock:
            return sorted(at for at, _seq, _cb in self._timers)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.mono += seconds
            self.wall += seconds
            due = sorted(t for t in self._timers if t[0] <= self.mono)
            for timer in due:
                self._timers.remove(timer)
        for _at, _seq, callback in due:
            callback()
