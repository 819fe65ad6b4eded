"""LRU eviction under a volume quota: only files this registry downloaded, never pinned ones."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

from worker.errors import DownloadFailed
from worker.registry.inventory import Inventory
from worker.registry.models import LiveEntry
from worker.registry.usage import UsageBatch
from worker.registry.volume import model_path

log = logging.getLogger(__name__)


def plan_eviction(
    entries: Iterable[LiveEntry],
    *,
    needed: int,
    quota_bytes: int,
    pinned_ids: set[str],
    keep: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[LiveEntry]:
    """Least-recently-used downloaded, unpinned files to delete so ``needed`` more bytes fit the quota.

    Files the operator copied in themselves (``downloaded`` false) are never deleted: the registry
    cannot fetch them back. Raises ``DownloadFailed`` when even evicting every candidate is not enough.
    """
    entries = list(entries)
    used = sum(e.size for e in entries)
    if used + needed <= quota_bytes:
        return []
    candidates = sorted(
        (
            e
            for e in entries
            if e.downloaded and (e.registry_id or "") not in pinned_ids and e.key not in keep
        ),
        key=lambda e: (e.last_used or e.downloaded_at or 0.0, e.key),
    )
    victims = []
    for entry in candidates:
        if used + needed <= quota_bytes:
            break
        victims.append(entry)
        used -= entry.size
    if used + needed > quota_bytes:
        raise DownloadFailed(
            f"WORKER_VOLUME_QUOTA_GB leaves no room: need {needed} bytes, {used} used of {quota_bytes} "
            "after evicting every unpinned downloaded file"
        )
    return victims


class Evictor:
    """Deletes what ``plan_eviction`` picks (``quota_bytes`` None: no quota, nothing is ever deleted)."""

    def __init__(
        self, *, models_dir: Path, inventory: Inventory, usage: UsageBatch, quota_bytes: int | None
    ) -> None:
        self.models_dir = models_dir
        self.inventory = inventory
        self.usage = usage
        self.quota_bytes = quota_bytes

    def make_room(self, needed: int, keep: set[str]) -> list[str]:
        """Evict until ``needed`` more bytes fit the quota, never the keys in ``keep``; returns what went."""
        if self.quota_bytes is None:
            return []
        return sorted(v.key for v in self.evict_to(self.quota_bytes, needed=needed, keep=keep))

    def evict_to(
        self,
        quota_bytes: int,
        *,
        needed: int = 0,
        keep: set[str] | None = None,
        dry_run: bool = False,
    ) -> list[LiveEntry]:
        """Delete least recently used downloads until the registered total + ``needed`` fits ``quota_bytes``.

        Raises ``DownloadFailed`` (from ``plan_eviction``) when evicting every candidate is not enough.
        """
        self.usage.flush()  # the LRU order must include this process's latest uses
        pinned = {c.id for c in self.inventory.catalogue.models if c.pinned}
        victims = plan_eviction(
            self.inventory.snapshot().models.values(),
            needed=needed,
            quota_bytes=quota_bytes,
            pinned_ids=pinned,
            keep=keep or set(),
        )
        if dry_run:
            return victims
        for victim in victims:
            log.warning(
                "evicting %s (%d bytes, last used %s) to fit %d bytes",
                victim.key,
                victim.size,
                victim.last_used,
                quota_bytes,
            )
            with contextlib.suppress(FileNotFoundError):
                model_path(self.models_dir, victim).unlink()
        if victims:
            self.inventory.forget({v.key for v in victims})
        return victims
