"""A planned model brought onto the volume once per volume, however many workers ask for it at once.

A per-model lock (``.locks/<key>.lock``) serialises downloads of one model across processes and hosts. The
waiter re-reads the registry once it holds the lock and uses the file another worker registered meanwhile;
otherwise it downloads (``Downloader``: verified, atomic), making room under the quota first, and registers
the file with its source.
"""

from __future__ import annotations

import logging
from pathlib import Path

from worker.clock import Clock
from worker.errors import DownloadFailed, ModelIncompatible
from worker.model_types import ModelType
from worker.registry.catalogue import match_catalogue
from worker.registry.download import Downloader, DownloadRequest, DownloadResult, TransferProgress
from worker.registry.download_plan import DownloadPlan
from worker.registry.eviction import Evictor
from worker.registry.hashing import Hasher
from worker.registry.inspection import inspect_file
from worker.registry.inventory import Inventory
from worker.registry.locks import held
from worker.registry.models import LiveEntry, entry_key
from worker.registry.names import contained_path, safe_relative_name
from worker.registry.volume import KIND_DIRS, LOCK_DIR, PICKLE_EXT, SAFETENSORS_EXT, FoundFile

log = logging.getLogger(__name__)

UNVERIFIED = "sha256 not published by the source; not verified"
BY_ANOTHER_WORKER = "downloaded by another worker"


class ModelFetcher:
    """Downloads planned models into their kind folder and registers them.

    Args:
        models_dir: the volume's models folder.
        inventory: the live registry (read after the lock, written with the new entry).
        downloader: the verified HTTP download.
        evictor: makes room under the quota once the size is known.
        allow_pickle: whether pickle files may be downloaded.
        hasher: hashes a downloaded LoRA again for A1111's "addnet" hash.
        clock: ``downloaded_at`` and the wait for another worker's download.
        lock_wait_s: how long to wait for another worker's download of the same model.
    """

    def __init__(
        self,
        *,
        models_dir: Path,
        inventory: Inventory,
        downloader: Downloader,
        evictor: Evictor,
        allow_pickle: bool,
        hasher: Hasher,
        clock: Clock,
        lock_wait_s: float,
    ) -> None:
        self.models_dir = models_dir
        self.inventory = inventory
        self.downloader = downloader
        self.evictor = evictor
        self.allow_pickle = allow_pickle
        self.hasher = hasher
        self.clock = clock
        self.lock_wait_s = lock_wait_s

    def fetch(
        self,
        kind: ModelType,
        plan: DownloadPlan,
        *,
        replace: LiveEntry | None,
        progress: TransferProgress | None = None,
    ) -> tuple[LiveEntry, tuple[str, ...]]:
        """The registered entry and notes for the user; ``replace`` is an unusable file to download over."""
        dest_dir = self.models_dir / KIND_DIRS[kind]
        if plan.file_name is not None:
            contained_path(dest_dir, plan.file_name, what="model file name")
        safe_relative_name(plan.key.replace("/", "_"), what="download key")

        def timed_out() -> DownloadFailed:
            return DownloadFailed(
                f"another worker is still downloading {plan.file_name or plan.key} "
                f"after {self.lock_wait_s:.0f}s"
            )

        lock = self.models_dir / LOCK_DIR / f"{plan.key}.lock"
        with held(lock, wait_s=self.lock_wait_s, clock=self.clock, timed_out=timed_out):
            done = self._already_done(kind, plan, replace)
            if done is not None:
                return done, (BY_ANOTHER_WORKER,)
            result = self._download(kind, plan, dest_dir, progress)
            entry = self._register(kind, plan, result)
            return entry, (() if result.hash_verified else (UNVERIFIED,))

    def _download(
        self, kind: ModelType, plan: DownloadPlan, dest_dir: Path, progress: TransferProgress | None
    ) -> DownloadResult:
        request = DownloadRequest(
            url=plan.url,
            dest_dir=dest_dir,
            key=plan.key,
            file_name=plan.file_name,
            expected_sha256=plan.sha256,
            expected_size=plan.size,
            approx_size=plan.approx_size,
            allowed_suffixes=SAFETENSORS_EXT + (PICKLE_EXT if self.allow_pickle else ()),
        )
        keep = {entry_key(kind, plan.file_name)} if plan.file_name else set()

        def reserve(needed: int) -> None:
            self.evictor.make_room(needed, keep)

        return self.downloader.fetch(request, reserve=reserve, progress=progress)

    def _register(self, kind: ModelType, plan: DownloadPlan, result: DownloadResult) -> LiveEntry:
        st = result.path.stat()
        found = FoundFile(kind, result.file_name, result.path, st.st_size, st.st_mtime_ns)
        # LoRAs are small: hash again for A1111's "addnet" hash; others reuse the download's sha256
        entry = inspect_file(
            found, allow_pickle=self.allow_pickle, hasher=self.hasher if kind == "lora" else None
        )
        entry.sha256 = result.sha256
        entry.short_hash = result.sha256[:10]
        entry.source = plan.source
        entry.registry_id = plan.registry_id or match_catalogue(self.inventory.catalogue, entry)
        entry.downloaded = True
        entry.downloaded_at = self.clock.time()
        self.inventory.put(entry)
        return entry

    def _already_done(
        self, kind: ModelType, plan: DownloadPlan, replace: LiveEntry | None
    ) -> LiveEntry | None:
        """After waiting for the lock: did another worker fetch it meanwhile?"""
        for entry in self.inventory.store.read().models.values():
            if entry.kind != kind or not entry.usable:
                continue
            same_name = plan.file_name is not None and entry.file_name == plan.file_name
            same_source = entry.source == plan.source or (
                plan.registry_id is not None and entry.registry_id == plan.registry_id
            )
            if not (same_name or same_source) or not self.inventory.current(entry):
                continue
            if replace is not None and entry.key == replace.key and entry.mtime_ns == replace.mtime_ns:
                continue  # the unusable file we came to replace
            if plan.sha256 is None or self.inventory.sha256_of(entry) == plan.sha256:
                return entry
            if same_name:  # downloading would overwrite another model: the operator decides
                raise ModelIncompatible(
                    f"{kind} {entry.file_name} on the volume is not catalogue entry {plan.key}: "
                    f"its sha256 differs from the declared {plan.sha256[:12]}…; rename or remove it",
                    details={"file_name": entry.file_name, "expected_sha256": plan.sha256},
                )
            log.warning(
                "%s matches %s by name or source but not by its declared sha256; not reusing it",
                entry.key,
                plan.key,
            )
        return None
