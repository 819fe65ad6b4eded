"""Bring the live registry in line with the model folders.

Only new or changed files are inspected (``inspection``): a file whose (size, mtime) equals its entry's is
reused untouched, so a warm scan is a ``stat`` per file. The slow part (hashing) runs outside the registry
lock, within the scan's deadline; only the merge takes the lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from worker.clock import Clock, Deadline
from worker.errors import RegistryError
from worker.model_types import MODEL_TYPES, ModelType
from worker.registry.catalogue import match_catalogue
from worker.registry.hashing import ByteProgress, Hasher
from worker.registry.inspection import inspect_file
from worker.registry.models import Catalogue, LiveEntry, LiveRegistry, entry_key
from worker.registry.store import RegistryStore
from worker.registry.volume import FoundFile, iter_model_files, model_path

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    hashed: int = 0
    total: int = 0
    #: mtime_ns of every folder walked: a later lookup rescans a kind only when one of them moved
    folder_mtimes: dict[str, int] = field(default_factory=dict)


def plan_scan(
    models_dir: Path,
    registry: LiveRegistry,
    *,
    hash_files: bool,
    allow_pickle: bool = False,
    kinds: Iterable[ModelType] = MODEL_TYPES,
    folder_mtimes: dict[str, int] | None = None,
) -> tuple[list[FoundFile], list[FoundFile]]:
    """(all files, files needing inspection) — unchanged (size, mtime) files reuse their entry.

    A usable safetensors entry written by a schema-1 registry has no ``layout`` yet: it is inspected
    again (its header only; ``needs_hash`` tells the caller its cached hashes still hold). So is a pickle
    entry judged under the other ``WORKER_ALLOW_PICKLE`` (the setting changed since).
    """
    found = list(iter_model_files(models_dir, kinds, folder_mtimes))
    todo = []
    for f in found:
        old = registry.models.get(entry_key(f.kind, f.file_name))
        changed = old is None or old.size != f.size or old.mtime_ns != f.mtime_ns
        changed = changed or (old is not None and old.problem != f.problem and f.problem is not None)
        changed = changed or (old is not None and old.format == "pickle" and old.usable != allow_pickle)
        unhashed = old is not None and old.sha256 is None and f.problem is None
        if changed or (hash_files and unhashed) or _predates_layouts(old):
            todo.append(f)
    return found, todo


def _predates_layouts(entry: LiveEntry | None) -> bool:
    return (
        entry is not None
        and entry.usable
        and entry.layout is None
        and entry.format == "safetensors"
        and entry.detected_kind in ("lora", "checkpoint")
    )


def needs_hash(found: FoundFile, registry: LiveRegistry) -> bool:
    """False only for an unchanged file whose entry already has its hashes."""
    old = registry.models.get(entry_key(found.kind, found.file_name))
    return old is None or old.sha256 is None or old.size != found.size or old.mtime_ns != found.mtime_ns


def merge_scan(
    registry: LiveRegistry,
    models_dir: Path,
    found: list[FoundFile],
    fresh: dict[str, LiveEntry],
    *,
    now: float,
    match_catalogue: Callable[[LiveEntry], str | None],
    kinds: Iterable[ModelType] = MODEL_TYPES,
) -> ScanResult:
    """Apply a scan of ``kinds`` to the (locked, freshest) registry, keeping usage history of known files."""
    scanned = set(kinds)
    result = ScanResult(total=len(found))
    present = {entry_key(f.kind, f.file_name) for f in found}
    for key, entry in fresh.items():
        old = registry.models.get(key)
        if old is not None:
            entry.registry_id = old.registry_id
            entry.source = old.source
            entry.downloaded = old.downloaded
            entry.downloaded_at = old.downloaded_at
            entry.last_used = old.last_used
            entry.use_count = old.use_count
            result.changed.append(key)
        else:
            result.added.append(key)
        registry.models[key] = entry
    for key in list(registry.models):
        entry = registry.models[key]
        if key in present or entry.kind not in scanned:
            continue
        # a file another worker added after our listing is not in ``found``: keep it while it exists
        if not os.path.lexists(model_path(models_dir, entry)):
            del registry.models[key]
            result.removed.append(key)
    for entry in registry.models.values():
        if entry.registry_id is None:
            entry.registry_id = match_catalogue(entry)
    if scanned >= set(MODEL_TYPES):
        registry.scanned_at = now
    return result


class Scanner:
    """Scans one volume into its live registry.

    Args:
        models_dir: the volume's models folder.
        store: the live registry file.
        catalogue: links new files to catalogue ids.
        allow_pickle: whether pickle files are usable.
        hasher: the full-file hash function (tests count its calls).
        clock: the scan's deadline and the ``scanned_at`` time.
    """

    def __init__(
        self,
        *,
        models_dir: Path,
        store: RegistryStore,
        catalogue: Catalogue,
        allow_pickle: bool,
        hasher: Hasher,
        clock: Clock,
    ) -> None:
        self.models_dir = models_dir
        self.store = store
        self.catalogue = catalogue
        self.allow_pickle = allow_pickle
        self.hasher = hasher
        self.clock = clock

    def scan(
        self,
        *,
        hash_files: bool = True,
        progress: ByteProgress | None = None,
        kinds: tuple[ModelType, ...] = MODEL_TYPES,
        deadline_s: float | None = None,
    ) -> ScanResult:
        """Bring the registry in line with the folders of ``kinds``.

        Only new or changed files are hashed, outside the lock, and only until ``deadline_s`` has passed
        (the rest are registered unhashed; the next scan hashes them).

        Raises:
            RegistryError: a model folder cannot be read, or the registry cannot be written.
        """
        deadline = Deadline.after(self.clock, deadline_s)
        before = self.store.read()
        mtimes: dict[str, int] = {}
        try:
            found, todo = plan_scan(
                self.models_dir,
                before,
                hash_files=hash_files,
                allow_pickle=self.allow_pickle,
                kinds=kinds,
                folder_mtimes=mtimes,
            )
            fresh = {}
            for f in todo:
                entry = self._inspect(f, before, hash_files and needs_hash(f, before), progress, deadline)
                fresh[entry.key] = entry
            result = self.store.update(
                lambda registry: self._merge(registry, found, fresh, hash_files, kinds, deadline)
            )
        except OSError as exc:
            raise RegistryError(
                f"scan of {self.models_dir} failed: {exc.strerror or exc} ({exc.filename})"
            ) from None
        result.folder_mtimes = mtimes
        if result.added or result.removed or result.changed:
            log.info(
                "registry scan: %d files, %d added, %d changed, %d removed",
                result.total,
                len(result.added),
                len(result.changed),
                len(result.removed),
            )
        return result

    def _inspect(
        self,
        found: FoundFile,
        before: LiveRegistry,
        rehash: bool,
        progress: ByteProgress | None = None,
        deadline: Deadline | None = None,
    ) -> LiveEntry:
        """A fresh entry for ``found``; an unchanged file's hashes are carried over instead of recomputed."""
        entry = inspect_file(
            found,
            allow_pickle=self.allow_pickle,
            hasher=self.hasher if rehash else None,
            progress=progress,
            deadline=deadline,
        )
        old = before.models.get(entry.key)
        if not rehash and old is not None and entry.sha256 is None:
            entry.sha256, entry.short_hash, entry.addnet_hash = old.sha256, old.short_hash, old.addnet_hash
        return entry

    def _merge(
        self,
        registry: LiveRegistry,
        found: list[FoundFile],
        fresh: dict[str, LiveEntry],
        hash_files: bool,
        kinds: tuple[ModelType, ...],
        deadline: Deadline | None,
    ) -> ScanResult:
        if self.store.recovered_from is not None:  # the file was corrupt: everything must be inspected again
            self.store.recovered_from = None
            for f in found:
                if entry_key(f.kind, f.file_name) not in fresh:
                    entry = self._inspect(f, LiveRegistry(), hash_files, deadline=deadline)
                    fresh[entry.key] = entry
        result = merge_scan(
            registry,
            self.models_dir,
            found,
            fresh,
            now=self.clock.time(),
            match_catalogue=lambda e: match_catalogue(self.catalogue, e),
            kinds=kinds,
        )
        result.hashed = sum(1 for e in fresh.values() if e.sha256) if hash_files else 0
        return result
