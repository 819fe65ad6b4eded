"""Cross-process locks on the volume (``flock``, through filelock), taken within a deadline on the clock.

The kernel releases a ``flock`` when its holder dies, so a killed worker never wedges the others; a live
holder that never lets go is met by the deadline, and the caller's own error says what was waited for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from worker.clock import Clock

#: how often a waiter tries the lock again
POLL_S = 0.05


@contextmanager
def held(path: Path, *, wait_s: float, clock: Clock, timed_out: Callable[[], Exception]) -> Iterator[None]:
    """Hold the lock file ``path`` for the ``with`` block; raise ``timed_out()`` after waiting ``wait_s``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    deadline = clock.monotonic() + wait_s
    while True:
        try:
            lock.acquire(blocking=False)
            break
        except Timeout:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise timed_out() from None
            clock.sleep(min(POLL_S, remaining))
    try:
        yield
    finally:
        lock.release()
