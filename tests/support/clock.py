"""A clock the test drives (``worker.clock.Clock``): waits are recorded and take no real time.

``sleep`` advances the clock at once and runs the ``on_sleep`` hooks (to make something happen at a chosen
moment: a server coming up, a process dying). ``wait`` (the progress relay's tick) blocks its thread until the
test calls ``advance`` past its deadline, or its event is set. Timers set with ``call_later`` run in the thread
that advances past them, in time order. ``monotonic_step`` makes every ``monotonic()`` read move time on by that
much: work that checks a deadline in a loop then meets it after a known number of checks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: the longest a test waits, in real seconds, for a thread to reach the clock
REAL_DEADLINE_S = 10.0


class FakeClock:
    def __init__(
        self, start: float = 1000.0, wall: float = 1_700_000_000.0, *, monotonic_step: float = 0.0
    ) -> None:
        self._now = start
        self._wall_offset = wall - start
        self.monotonic_step = monotonic_step
        self._cond = threading.Condition()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.sleeps: list[float] = []
        self.on_sleep: list[Callable[[float], None]] = []
        self.waits_started = 0

    @property
    def mono(self) -> float:
        """The monotonic time, read without stepping it."""
        with self._cond:
            return self._now

    @property
    def wall(self) -> float:
        """The wall-clock time, read without stepping it."""
        return self.mono + self._wall_offset

    def monotonic(self) -> float:
        value = self.mono
        if self.monotonic_step:
            self.advance(self.monotonic_step)
        return value

    def time(self) -> float:
        return self.wall

    def sleep(self, seconds: float) -> None:
        with self._cond:
            self.sleeps.append(seconds)
        self.advance(seconds)
        for hook in list(self.on_sleep):
            hook(seconds)

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            due = sorted(t for t in self._timers if t[0] <= self._now)
            for timer in due:
                self._timers.remove(timer)
            self._cond.notify_all()
        for _at, _seq, callback in due:
            callback()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self._cond:
            deadline = self._now + seconds
            self.waits_started += 1
            self._cond.notify_all()
            while not event.is_set() and self._now < deadline:
                self._cond.wait(0.01)  # also polls the event: setting it does not notify this condition
        return event.is_set()

    def wait_for_waits(self, count: int) -> None:
        """Block (real time, bounded) until ``wait`` has been entered ``count`` times in all."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.waits_started >= count, REAL_DEADLINE_S):
                raise TimeoutError(f"wait() entered {self.waits_started} times, expected {count}")

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Callable[[], None]:
        with self._cond:
            self._seq += 1
            timer = (self._now + delay_s, self._seq, callback)
            self._timers.append(timer)

        def cancel() -> None:
            with self._cond:
                if timer in self._timers:
                    self._timers.remove(timer)

        return cancel

    @property
    def pending_timers(self) -> list[float]:
        """When each timer still set will run (monotonic seconds)."""
        with self._cond:
            return sorted(at for at, _seq, _cb in self._timers)
