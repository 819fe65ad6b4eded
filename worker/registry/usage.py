"""Model uses (count, last time) collected in memory and written to the live registry in one batch.

A job never pays for rewriting the registry: the first use after a flush sets a timer on the clock, and
the batch is written ``flush_after_s`` later, or at ``flush()``, or at interpreter exit. A failed write is
logged and its uses kept for the next one; a worker killed with SIGKILL loses at most one batch of use
counts (LRU order, never a model).
"""

from __future__ import annotations

import atexit
import logging
import threading

from worker.clock import Cancel, Clock
from worker.registry.models import LiveRegistry
from worker.registry.store import RegistryStore

log = logging.getLogger(__name__)

Uses = dict[str, tuple[int, float]]  # registry key -> (count, last use)


class UsageBatch:
    def __init__(self, store: RegistryStore, *, flush_after_s: float, clock: Clock) -> None:
        self._store = store
        self._flush_after_s = flush_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: Uses = {}
        self._cancel_timer: Cancel | None = None
        atexit.register(self.flush)

    def add(self, key: str) -> None:
        """One use of ``key``, now."""
        when = self._clock.time()
        with self._lock:
            _merge(self._pending, {key: (1, when)})
            if self._cancel_timer is None:
                self._cancel_timer = self._clock.call_later(self._flush_after_s, self.flush)

    def flush(self) -> None:
        """Write the pending uses now (eviction calls this first: the LRU order must include them)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if self._cancel_timer is not None:
                self._cancel_timer()
                self._cancel_timer = None
        if not pending:
            return
        try:
            self._store.update(lambda registry: _record(registry, pending))
        except Exception:  # bookkeeping must never break a job or the exit
            log.warning("could not record %d model use(s) in the registry", len(pending), exc_info=True)
            with self._lock:
                _merge(self._pending, pending)


def _merge(into: Uses, uses: Uses) -> None:
    for key, (count, last) in uses.items():
        old_count, old_last = into.get(key, (0, 0.0))
        into[key] = (old_count + count, max(old_last, last))


def _record(registry: LiveRegistry, uses: Uses) -> None:
    for key, (count, last) in uses.items():
        entry = registry.models.get(key)
        if entry is None:
            log.debug("record_use: %s is not registered", key)
            continue
        entry.last_used = max(entry.last_used or 0.0, last)
        entry.use_count += count
