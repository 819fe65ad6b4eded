"""Generation state for ``/progress``, ``/interrupt`` and ``/skip``, and the FIFO generation lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from worker.clock import SYSTEM_CLOCK, Clock


class QueueTimeout(Exception):
    """The FIFO lock was not granted within the waiter's deadline."""


class FifoLock:
    """A lock granted strictly in arrival order (A1111's ``queue_lock`` is a FIFO lock too).

    A waiter may give up after a deadline: its turn is then skipped, so a request whose caller has stopped
    waiting never runs later in front of, or after, the others.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    def acquire(self, timeout_s: float | None = None) -> None:
        """Wait for this caller's turn; past ``timeout_s`` give it up and raise ``QueueTimeout``."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            if not self._cond.wait_for(lambda: self._serving == ticket, timeout=timeout_s):
                self._abandoned.add(ticket)
                ahead = ticket - self._serving
                raise QueueTimeout(f"{ahead} request(s) still ahead after {timeout_s:g} s")

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
            self._cond.notify_all()

    @contextmanager
    def hold(self, timeout_s: float | None = None) -> Iterator[None]:
        self.acquire(timeout_s)
        try:
            yield
        finally:
            self.release()


class GenerationState:
    """A1111's ``shared.state``: what ``/progress`` reports and what ``/interrupt``/``/skip`` set.

    Time comes from ``clock`` (the job's timestamp, and the elapsed time the ETA is estimated from).
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.job_timestamp = "0"
        self.sampling_step = 0
        self.sampling_steps = 0
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.time_start = 0.0

    def begin(self, job: str, job_count: int) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = self.skipped = self.stopping_generation = False
            self.job_timestamp = datetime.fromtimestamp(self._clock.time()).strftime("%Y%m%d%H%M%S")
            self.time_start = self._clock.monotonic()

    def end(self) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = "", 0, 0
            self.sampling_step = self.sampling_steps = 0

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }

    def progress(self) -> dict[str, Any]:
        """``GET /sdapi/v1/progress`` body."""
        state = self.as_dict()
        if self.job_count == 0:
            return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
        progress = self.job_no / self.job_count
        if self.sampling_steps:
            progress += self.sampling_step / self.sampling_steps / self.job_count
        progress = min(max(progress, 0.01), 1.0)
        elapsed = self._clock.monotonic() - self.time_start
        eta = elapsed / progress - elapsed
        return {
            "progress": progress,
            "eta_relative": eta,
            "state": state,
            "current_image": None,
            "textinfo": None,
        }
