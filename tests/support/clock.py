"""A clock the test drives (``worker.clock.Clock``): waits are recorded and take no real time.

``sleep`` advances the clock at once and runs the ``on_sleep`` hooks (to make something happen at a chosen
moment: a server coming up, a process dying). ``wait`` (the progress relay's tick) blocks its thread until
the test calls ``advance`` past its deadline, or its event is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: the longest a test waits, in real seconds, for a thread to reach the clock
REAL_DEADLINE_S = 10.0


class FakeClock:
    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._cond = threading.Condition()
        self.sleeps: list[float] = []
        self.on_sleep: list[Callable[[float], None]] = []
        self.waits_started = 0

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def time(self) -> float:
        return self.monotonic() + self._wall_offset

    def sleep(self, seconds: float) -> None:
        with self._cond:
            self.sleeps.append(seconds)
            self._now += seconds
            self._cond.notify_all()
        for hook in list(self.on_sleep):
            hook(seconds)

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

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
