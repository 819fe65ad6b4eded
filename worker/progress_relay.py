"""Relays the engine's progress to a callback about once a second while a job generates.

A1111's ``/sdapi/v1/progress`` is not behind its generation lock, so it can be polled from a side
thread during a txt2img call (relayed from the real A1111 in tests/a1111/test_worker_jobs.py). A failed
poll is logged and skipped: progress is a courtesy, never a reason to fail a job. The relay ticks through
the injected ``Clock``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from worker.a1111.progress import GenerationProgress
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import WorkerError
from worker.logs import job_context

log = logging.getLogger(__name__)


class ProgressSource(Protocol):
    def progress(self) -> GenerationProgress: ...


class ProgressRelay:
    """Context manager: polls ``source`` every ``interval_s`` and sends changes to ``sink``."""

    def __init__(
        self,
        source: ProgressSource,
        sink: Callable[[dict[str, Any]], None],
        *,
        interval_s: float,
        job_id: str | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._source = source
        self._sink = sink
        self._interval_s = interval_s
        self._job_id = job_id
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-relay", daemon=True)
        self.updates_sent = 0

    def __enter__(self) -> ProgressRelay:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 5)

    def _run(self) -> None:
        last: tuple[int, int] | None = None
        with job_context(self._job_id):
            while not self._clock.wait(self._stop, self._interval_s):
                try:
                    progress = self._source.progress()
                except WorkerError as exc:
                    log.debug("progress poll failed: %s", exc)
                    continue
                # Before its first step A1111 still reports the previous job's step count: skip that.
                if not progress.active or progress.step == 0 or (progress.step, progress.total) == last:
                    continue
                last = (progress.step, progress.total)
                update = {
                    "progress": round(progress.progress, 4),
                    "step": progress.step,
                    "total": progress.total,
                    "eta_s": round(progress.eta_relative, 2),
                }
                try:
                    self._sink(update)
                    self.updates_sent += 1
                except Exception:  # a broken sink must not kill the job
                    log.warning("progress update could not be sent", exc_info=True)
