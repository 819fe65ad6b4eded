"""What is on the volume, looked up fast: the live registry's snapshot, its name index, targeted rescans.

The registry file is re-parsed only when some writer replaced it, and each snapshot gets one ``LiveIndex``,
so a lookup is a few dictionary reads whatever the volume's size. A hit ``stat``s its one file; a miss
rescans a kind only when one of its folders changed since this process last scanned it.
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.errors import InputInvalid, ModelIncompatible
from worker.model_types import MODEL_TYPES, ModelFacts, ModelType
from worker.registry.hashing import ByteProgress, Hasher
from worker.registry.models import Catalogue, CatalogueEntry, LiveEntry, LiveRegistry
from worker.registry.resolve import LiveIndex, Resolution, resolve
from worker.registry.scan import Scanner, ScanResult
from worker.registry.store import RegistryStore
from worker.registry.volume import KIND_DIRS, is_current, model_path


class Inventory:
    """The volume's models as the registry knows them.

    Args:
        models_dir: the volume's models folder.
        store: the live registry file.
        catalogue: the operator's catalogue (names, default weights, declared hashes).
        scanner: rescans folders that changed.
        hasher: hashes a file a scan left unhashed when its hash is needed now.
        scan_deadline_s: budget of a rescan on the job path (hashing stops there; the next scan goes on).
    """

    def __init__(
        self,
        *,
        models_dir: Path,
        store: RegistryStore,
        catalogue: Catalogue,
        scanner: Scanner,
        hasher: Hasher,
        scan_deadline_s: float | None,
    ) -> None:
        self.models_dir = models_dir
        self.store = store
        self.catalogue = catalogue
        self.scanner = scanner
        self.hasher = hasher
        self.scan_deadline_s = scan_deadline_s
        self._indexed: tuple[LiveRegistry, LiveIndex] | None = None
        self._folder_mtimes: dict[ModelType, dict[str, int]] = {}

    # ---- reading ----------------------------------------------------------------------------------

    def snapshot(self) -> LiveRegistry:
        """The live registry, scanning first when it was never built (or was rebuilt after corruption)."""
        registry = self.store.read()
        if registry.scanned_at is None:
            self.scan(deadline_s=self.scan_deadline_s)
            registry = self.store.read()
        return registry

    def entries(self) -> list[LiveEntry]:
        return sorted(self.snapshot().models.values(), key=lambda e: e.key)

    def entries_below(self, path: Path) -> list[LiveEntry]:
        """Registered models at or below ``path`` (a file, a model folder or any folder on the volume)."""
        self.scan()
        resolved = path.resolve()
        return [
            entry
            for entry in self.entries()
            if (location := model_path(self.models_dir, entry).resolve()) == resolved
            or resolved in location.parents
        ]

    def scan(
        self,
        *,
        hash_files: bool = True,
        progress: ByteProgress | None = None,
        kinds: tuple[ModelType, ...] = MODEL_TYPES,
        deadline_s: float | None = None,
    ) -> ScanResult:
        """``Scanner.scan``, remembering the folders' mtimes for later lookups."""
        result = self.scanner.scan(
            hash_files=hash_files, progress=progress, kinds=kinds, deadline_s=deadline_s
        )
        for kind in kinds:
            root = str(self.models_dir / KIND_DIRS[kind])
            self._folder_mtimes[kind] = {
                d: m for d, m in result.folder_mtimes.items() if d == root or d.startswith(root + os.sep)
            }
        return result

    def rescan_changed(self) -> None:
        """Rescan (within ``scan_deadline_s``) the kinds whose folders gained, lost or renamed an entry."""
        changed = tuple(kind for kind in MODEL_TYPES if self._folders_changed(kind))
        if changed:
            self.scan(kinds=changed, deadline_s=self.scan_deadline_s)

    def view(self) -> tuple[LiveRegistry, LiveIndex]:
        """The snapshot and its index, rebuilt only when the registry file changed (a ``stat`` otherwise)."""
        registry = self.snapshot()
        view = self._indexed
        if view is None or view[0] is not registry:
            view = (registry, LiveIndex(registry, self.catalogue))
            self._indexed = view
        return view

    def resolve(self, kind: ModelType, reference: str) -> Resolution:
        """Look ``reference`` up in the cached index; the disk is only rescanned where it changed.

        A hit costs one ``stat`` of the file (still the registered size and mtime?). A miss rescans the
        kind's folders only when one of their mtimes moved (a file added, removed or renamed since this
        process last scanned them), within ``scan_deadline_s``: never the whole volume in a job.
        """
        if kind not in MODEL_TYPES:
            raise InputInvalid(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_TYPES)}")
        registry, index = self.view()
        found = resolve(kind, reference, registry, self.catalogue, index)
        if found.live is not None and self.current(found.live):
            return found
        if found.live is None and not self._folders_changed(kind):
            return found
        self.scan(kinds=(kind,), deadline_s=self.scan_deadline_s)
        registry, index = self.view()
        return resolve(kind, reference, registry, self.catalogue, index)

    def _folders_changed(self, kind: ModelType) -> bool:
        """Whether a folder of ``kind`` gained, lost or renamed an entry since this process scanned it."""
        seen = self._folder_mtimes.get(kind)
        if seen is None:
            return True
        if not seen:
            return (self.models_dir / KIND_DIRS[kind]).is_dir()
        for folder, mtime_ns in seen.items():
            try:
                if os.stat(folder).st_mtime_ns != mtime_ns:
                    return True
            except OSError:
                return True
        return False

    def current(self, entry: LiveEntry) -> bool:
        """Whether ``entry`` still describes the file (or model folder) on disk."""
        return is_current(self.models_dir, entry)

    def catalogue_entry(self, registry_id: str | None) -> CatalogueEntry | None:
        return next((c for c in self.catalogue.models if c.id == registry_id), None) if registry_id else None

    # ---- writing ----------------------------------------------------------------------------------

    def sha256_of(self, entry: LiveEntry) -> str | None:
        """The entry's sha256, hashing the file now (and recording it) when a scan left it unhashed."""
        if entry.sha256 is not None:
            return entry.sha256
        try:
            digest = self.hasher(model_path(self.models_dir, entry), None, None).sha256
        except OSError:
            return None

        def record(registry: LiveRegistry) -> None:
            current = registry.models.get(entry.key)
            if current is not None and current.mtime_ns == entry.mtime_ns and current.size == entry.size:
                current.sha256, current.short_hash = digest, digest[:10]

        self.store.update(record)
        return digest

    def put(self, entry: LiveEntry) -> None:
        """Register ``entry`` (a download or a conversion), keeping the use history of the key it replaces."""

        def put(registry: LiveRegistry) -> None:
            old = registry.models.get(entry.key)
            if old is not None:
                entry.last_used, entry.use_count = old.last_used, old.use_count
            registry.models[entry.key] = entry

        self.store.update(put)

    def forget(self, keys: set[str]) -> None:
        self.store.update(lambda registry: [registry.models.pop(k, None) for k in keys])


def ensure_usable(entry: LiveEntry) -> None:
    """Raise ``ModelIncompatible`` for a file that is present but unusable: never silently."""
    if not entry.usable:
        raise ModelIncompatible(
            f"{entry.kind} {entry.file_name} is on the volume but unusable: {entry.problem}",
            details={"file_name": entry.file_name, "problem": entry.problem},
        )


def facts_of(entry: LiveEntry, catalogue: CatalogueEntry | None) -> ModelFacts:
    """What the job path learns about a model: the file's facts, with the catalogue's weights and words."""
    architecture = entry.architecture
    if architecture in (None, "unknown") and catalogue is not None and catalogue.architecture:
        architecture = catalogue.architecture  # the operator's word where the header tells nothing
    return ModelFacts(
        kind=entry.kind,
        file_name=entry.file_name,
        architecture=architecture,
        sha256=entry.sha256,
        short_hash=entry.short_hash,
        default_weight=catalogue.default_weight if catalogue else None,
        trigger_words=catalogue.trigger_words if catalogue else (),
        registry_id=entry.registry_id,
        layout=entry.layout,
        usable_by=tuple(entry.usable_by) if entry.usable_by is not None else None,
        format=entry.format,
        unet_in_channels=entry.details.get("unet_in_channels"),
    )
