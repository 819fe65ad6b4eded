"""LRU eviction under a volume quota: only files this registry downloaded, never pinned ones."""

from __future__ import annotations

from collections.abc import Iterable

from worker.errors import DownloadFailed
from worker.registry.models import LiveEntry


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
