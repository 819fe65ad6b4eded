"""Waiting on a real process (a server coming up, a generation reaching a step): one bounded poll loop.

Time goes through ``worker.clock.Clock`` like every wait in the project; these waits are on real
processes, so the tests pass the system clock, and a miss fails with what was awaited, never a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from worker.clock import SYSTEM_CLOCK, Clock, Deadline

T = TypeVar("T")


def poll_until(
    check: Callable[[], T | None],
    what: str,
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    clock: Clock = SYSTEM_CLOCK,
) -> T:
    """Call ``check`` until it returns something other than None, and return that.

    Raises:
        TimeoutError: naming ``what``, after ``timeout_s`` seconds of ``clock``.
    """
    deadline = Deadline(clock, clock.monotonic() + timeout_s)
    while True:
        found = check()
        if found is not None:
            return found
        if deadline.passed():
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        clock.sleep(interval_s)
