"""``ModelRegistry``: the ``ModelProvider`` the job path calls (describe, provision, record_use).

It ties the pieces together: the live registry file (store), the catalogue, scanning and hashing,
reference resolution, Civitai/Hugging Face downloads under a per-model cross-process lock, and LRU
eviction. Everything it touches is injectable so tests run it against real files and a loopback
HTTP server.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from filelock import FileLock, Timeout

from worker.errors import DownloadFailed, InputInvalid, ModelIncompatible, ModelNotFound
from worker.model_types import MODEL_TYPES, ModelFacts, ModelType, ProvisionedModel
from worker.registry.catalogue import load_catalogue, match_catalogue
from worker.registry.civitai import DEFAULT_API_BASE, CivitaiClient
from worker.registry.conversions import (
    ConversionFailed,
    ConversionResult,
    ConversionRunner,
    Target,
    conversion_hint,
    describe_layout,
    existing_conversion,
    options_for,
    target_for_engine,
)
from worker.registry.download import Downloader, DownloadRequest, TokenRule
from worker.registry.evict import plan_eviction
from worker.registry.hashing import Hasher, Progress, hash_file
from worker.registry.models import (
    Catalogue,
    CatalogueEntry,
    CivitaiSource,
    HuggingFaceSource,
    LiveEntry,
    LiveRegistry,
    UrlSource,
    entry_key,
)
from worker.registry.names import contained_path, safe_relative_name
from worker.registry.resolve import LiveIndex, Resolution, not_found, resolve
from worker.registry.scan import (
    KIND_DIRS,
    PICKLE_EXT,
    SAFETENSORS_EXT,
    FoundFile,
    ScanResult,
    inspect_file,
    merge_scan,
    needs_hash,
    plan_scan,
)
from worker.registry.store import RegistryStore
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

DEFAULT_HF_BASE = "https://huggingface.co"
#: leftovers of killed downloads older than this are removed by ``gc``
STALE_PART_S = 6 * 3600.0


@dataclass(frozen=True)
class _Plan:
    """Where a model comes from, once remote references are resolved."""

    url: str
    key: str
    file_name: str | None
    sha256: str | None
    size: int | None
    approx_size: int | None
    source: dict[str, Any]
    registry_id: str | None


@dataclass(frozen=True)
class VerifyProblem:
    key: str
    problem: str


class ModelRegistry:
    """Registry of the models on one volume (``models_dir``), shared safely by many workers.

    Args:
        models_dir: root with ``checkpoints/ loras/ embeddings/ vae/``.
        registry_path: the live registry JSON (usually ``models_dir/cache_registry.json``).
        catalogue: the parsed catalogue (``load_catalogue``).
        allowed_hosts: download allowlist (``host``, ``*.host`` or ``host:port`` patterns).
        civitai_api_base, hf_base: remote endpoints (tests point them at a loopback server).
        download_deadline_s: overall budget per download (None: only the stall timeout applies).
        quota_bytes: volume quota enabling LRU eviction (None: no quota).
        clock: wall clock for timestamps; hasher: the full-file hash function (tests count calls).
        scan_deadline_s: budget of a rescan on the job path (hashing stops there; the next scan goes on).
        usage_flush_s: how long uses are batched in memory before one registry write (``record_use``).
    """

    def __init__(
        self,
        *,
        models_dir: Path,
        registry_path: Path,
        catalogue: Catalogue,
        allowed_hosts: tuple[str, ...],
        allow_pickle: bool = False,
        max_bytes: int = 20 * 1024**3,
        timeout_s: float = 60.0,
        download_deadline_s: float | None = None,
        quota_bytes: int | None = None,
        civitai_token: str | None = None,
        hf_token: str | None = None,
        civitai_api_base: str = DEFAULT_API_BASE,
        hf_base: str = DEFAULT_HF_BASE,
        lock_timeout_s: float = 60.0,
        attempts: int = 5,
        backoff_s: float = 0.5,
        disk_free: Callable[[Path], int] | None = None,
        clock: Callable[[], float] = time.time,
        hasher: Hasher = hash_file,
        progress: bool = False,
        auto_convert: bool = True,
        scan_deadline_s: float | None = 10.0,
        usage_flush_s: float = 10.0,
    ) -> None:
        self.models_dir = models_dir
        self.scan_deadline_s = scan_deadline_s
        self._indexed: tuple[LiveRegistry, LiveIndex] | None = None
        self._folder_mtimes: dict[ModelType, dict[str, int]] = {}
        self._usage = UsageBatch(self._write_uses, flush_after_s=usage_flush_s)
        self.catalogue = catalogue
        self.allow_pickle = allow_pickle
        self.quota_bytes = quota_bytes
        self.download_deadline_s = download_deadline_s
        self.lock_timeout_s = lock_timeout_s
        self.hf_base = hf_base.rstrip("/")
        self.clock = clock
        self.hasher = hasher
        self.progress = progress
        self.store = RegistryStore(registry_path, lock_timeout_s=lock_timeout_s, clock=clock)
        self.auto_convert = auto_convert
        self.converter = ConversionRunner(models_dir=models_dir, store=self.store, hasher=hasher, clock=clock)
        session = requests.Session()
        tokens = []
        if civitai_token:
            tokens.append(TokenRule(("civitai.com", "*.civitai.com"), civitai_token, (civitai_api_base,)))
        if hf_token:
            tokens.append(TokenRule(("huggingface.co", "*.huggingface.co"), hf_token, (hf_base,)))
        extra: dict[str, Any] = {} if disk_free is None else {"disk_free": disk_free}
        self.downloader = Downloader(
            allowed_hosts=allowed_hosts,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            deadline_s=download_deadline_s,
            tokens=tuple(tokens),
            attempts=attempts,
            backoff_s=backoff_s,
            session=session,
            progress=progress,
            **extra,
        )
        self.civitai = CivitaiClient(
            api_base=civitai_api_base,
            token=civitai_token,
            timeout_s=timeout_s,
            allowed_hosts=allowed_hosts,
            session=session,
        )

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **overrides: Any) -> ModelRegistry:
        """The production wiring: everything from ``WorkerSettings``; ``overrides`` for tests and the CLI."""
        kwargs: dict[str, Any] = {
            "models_dir": settings.models_dir,
            "registry_path": settings.effective_registry_path,
            "catalogue": load_catalogue(settings.catalogue_path),
            "allowed_hosts": settings.download_allowed_hosts,
            "allow_pickle": settings.allow_pickle,
            "max_bytes": settings.download_max_bytes,
            "timeout_s": settings.download_timeout_s,
            # a job cannot outlive its own timeout, so neither can the download it waits for
            "download_deadline_s": settings.job_timeout_s,
            "quota_bytes": int(settings.volume_quota_gb * 1e9) if settings.volume_quota_gb else None,
            "civitai_token": settings.civitai_token.get_secret_value() if settings.civitai_token else None,
            "hf_token": settings.hf_token.get_secret_value() if settings.hf_token else None,
            "auto_convert": settings.auto_convert,
            # a rescan on the job path must leave the job most of its time
            "scan_deadline_s": min(10.0, settings.job_timeout_s / 4),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # ---- reading ----------------------------------------------------------------------------------

    def snapshot(self) -> LiveRegistry:
        """The live registry, scanning first when it was never built (or was rebuilt after corruption)."""
        registry = self.store.read()
        if registry.scanned_at is None:
            self.scan(deadline_s=self.scan_deadline_s)
            registry = self.store.read()
        return registry

    def warm(self, *, deadline_s: float | None = None) -> ScanResult:
        """Start-up: one full scan (hashing new files within ``deadline_s``) and the lookup index built."""
        result = self.scan(deadline_s=deadline_s)
        self._view()
        return result

    def _view(self) -> tuple[LiveRegistry, LiveIndex]:
        """The snapshot and its index, rebuilt only when the registry file changed (a ``stat`` otherwise)."""
        registry = self.snapshot()
        view = self._indexed
        if view is None or view[0] is not registry:
            view = (registry, LiveIndex(registry, self.catalogue))
            self._indexed = view
        return view

    def entries(self) -> list[LiveEntry]:
        return sorted(self.snapshot().models.values(), key=lambda e: e.key)

    def scan(
        self,
        *,
        hash_files: bool = True,
        progress: Progress | None = None,
        kinds: tuple[ModelType, ...] = MODEL_TYPES,
        deadline_s: float | None = None,
    ) -> ScanResult:
        """Bring the registry in line with the folders of ``kinds``.

        Only new or changed files are hashed, outside the lock, and only until ``deadline_s`` has passed
        (the rest are registered unhashed; the next scan hashes them).
        """
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        before = self.store.read()
        mtimes: dict[str, int] = {}
        found, todo = plan_scan(
            self.models_dir, before, hash_files=hash_files, kinds=kinds, folder_mtimes=mtimes
        )
        fresh = {}
        for f in todo:
            rehash = hash_files and needs_hash(f, before)
            entry = inspect_file(
                f,
                allow_pickle=self.allow_pickle,
                hasher=self.hasher if rehash else None,
                progress=progress,
                deadline=deadline,
            )
            old = before.models.get(entry.key)
            if not rehash and old is not None and entry.sha256 is None:
                entry.sha256, entry.short_hash, entry.addnet_hash = (
                    old.sha256,
                    old.short_hash,
                    old.addnet_hash,
                )
            fresh[entry.key] = entry

        def apply(registry: LiveRegistry) -> ScanResult:
            if self.store.recovered_from is not None:  # file was corrupt: everything must be re-inspected
                self.store.recovered_from = None
                missing = [f for f in found if entry_key(f.kind, f.file_name) not in fresh]
                for f in missing:
                    e = inspect_file(
                        f,
                        allow_pickle=self.allow_pickle,
                        hasher=self.hasher if hash_files else None,
                        deadline=deadline,
                    )
                    fresh[e.key] = e
            result = merge_scan(
                registry,
                self.models_dir,
                found,
                fresh,
                now=self.clock(),
                match_catalogue=lambda e: match_catalogue(self.catalogue, e),
                kinds=kinds,
            )
            result.hashed = sum(1 for e in fresh.values() if e.sha256) if hash_files else 0
            return result

        result = self.store.update(apply)
        for kind in kinds:
            root = str(self.models_dir / KIND_DIRS[kind])
            self._folder_mtimes[kind] = {
                d: m for d, m in mtimes.items() if d == root or d.startswith(root + os.sep)
            }
        if result.added or result.removed or result.changed:
            log.info(
                "registry scan: %d files, %d added, %d changed, %d removed",
                result.total,
                len(result.added),
                len(result.changed),
                len(result.removed),
            )
        return result

    def resolve(self, kind: ModelType, reference: str) -> Resolution:
        """Look ``reference`` up in the cached index; the disk is only rescanned where it changed.

        A hit costs one ``stat`` of the file (still the registered size and mtime?). A miss rescans the
        kind's folders only when one of their mtimes moved (a file added, removed or renamed since this
        process last scanned them), within ``scan_deadline_s``: never the whole volume in a job.
        """
        _check_kind(kind)
        registry, index = self._view()
        found = resolve(kind, reference, registry, self.catalogue, index)
        if found.live is not None and self._current(found.live):
            return found
        if found.live is None and not self._folders_changed(kind):
            return found
        self.scan(kinds=(kind,), deadline_s=self.scan_deadline_s)
        registry, index = self._view()
        return resolve(kind, reference, registry, self.catalogue, index)

    def _folders_changed(self, kind: ModelType) -> bool:
        """Whether a folder of ``kind`` gained, lost or renamed an entry since this process scanned it."""
        seen = self._folder_mtimes.get(kind)
        if seen is None:
            return True
        root = self.models_dir / KIND_DIRS[kind]
        if not seen:
            return root.is_dir()
        for folder, mtime_ns in seen.items():
            try:
                if os.stat(folder).st_mtime_ns != mtime_ns:
                    return True
            except OSError:
                return True
        return False

    def describe(self, kind: ModelType, reference: str) -> ModelFacts | None:
        """Facts about a local model (any reference form); None when it is not on the volume.

        Raises ``ModelIncompatible`` for a present but unusable file (truncated, pickle refused,
        wrong folder): never silently.
        """
        found = self.resolve(kind, reference)
        if found.live is None:
            return None
        self._ensure_usable(found.live)
        return self._facts(found.live, found.catalogue)

    # ---- provisioning -------------------------------------------------------------------------------

    def provision(self, kind: ModelType, reference: str) -> ProvisionedModel | None:
        """Make the model present, downloading a catalogue entry or explicit remote reference if needed."""
        started = time.monotonic()
        found = self.resolve(kind, reference)
        cat = found.catalogue
        if (
            found.live is not None
            and cat is not None
            and cat.sha256
            and self._sha256_of(found.live) != cat.sha256
        ):
            # a file linked to the catalogue entry by name only: not the declared file, so fetch that one
            log.warning(
                "%s is not catalogue entry %s (its sha256 differs); fetching it", found.live.key, cat.id
            )
            found = Resolution(None, cat, found.remote)
        if found.live is not None and found.live.usable:
            return ProvisionedModel(self._facts(found.live, found.catalogue))
        if found.catalogue is None and found.remote is None:
            if found.live is not None:
                self._ensure_usable(found.live)
            return None
        plan = self._plan(kind, found)
        if plan is None:
            if found.live is not None:
                self._ensure_usable(found.live)
            assert found.catalogue is not None
            raise ModelNotFound(
                f"{kind} {reference!r} is catalogue entry {found.catalogue.id!r} but is not on the volume "
                f"and the catalogue has no download source for it; copy it into "
                f"{KIND_DIRS[kind]}/ or add a source to the catalogue",
                details={"reference": reference, "registry_id": found.catalogue.id},
            )
        entry, notes = self._download_locked(kind, plan, replace=found.live)
        self._ensure_usable(entry)
        catalogue = next((c for c in self.catalogue.models if c.id == entry.registry_id), None)
        return ProvisionedModel(
            self._facts(entry, catalogue), downloaded=True, seconds=time.monotonic() - started, notes=notes
        )

    def pull(self, reference: str, kind: ModelType | None = None) -> ProvisionedModel:
        """CLI helper: provision with the kind taken from the catalogue or Civitai when not given."""
        kinds: list[ModelType] = [kind] if kind else []
        if not kinds:
            for candidate in MODEL_TYPES:
                res = resolve(candidate, reference, self.snapshot(), self.catalogue)
                if res.live or res.catalogue:
                    kinds = [candidate]
                    break
        if not kinds and reference.lower().startswith("civitai:"):
            res = resolve("checkpoint", reference, self.snapshot(), self.catalogue)
            assert res.remote is not None and isinstance(res.remote.source, CivitaiSource)
            src = res.remote.source
            info = self.civitai.resolve(src.model_id, src.version_id, allow_pickle=self.allow_pickle)
            kinds = [info.kind] if info.kind else []
        if not kinds:
            raise InputInvalid(f"cannot tell which kind {reference!r} is; pass --kind")
        result = self.provision(kinds[0], reference)
        if result is None:
            raise not_found(kinds[0], reference, self.snapshot(), self.catalogue)
        return result

    def record_use(self, kind: ModelType, file_name: str) -> None:
        """Note a use (last_used, use_count): the LRU order eviction follows.

        Uses are batched in memory and written by a background thread (one locked write per
        ``usage_flush_s``), so a job never pays for rewriting the registry; ``flush_uses`` writes now.
        """
        self._usage.add(entry_key(kind, file_name), self.clock())

    def flush_uses(self) -> None:
        """Write the batched uses now (at exit, before eviction, in tests)."""
        self._usage.flush()

    def _write_uses(self, uses: dict[str, tuple[int, float]]) -> None:
        def touch(registry: LiveRegistry) -> None:
            for key, (count, last) in uses.items():
                entry = registry.models.get(key)
                if entry is None:
                    log.debug("record_use: %s is not registered", key)
                    continue
                entry.last_used = max(entry.last_used or 0.0, last)
                entry.use_count += count

        self.store.update(touch)

    def _plan(self, kind: ModelType, found: Resolution) -> _Plan | None:
        entry = found.catalogue
        source = entry.source if entry is not None else (found.remote.source if found.remote else None)
        rid = entry.id if entry is not None else None
        cat_name = entry.file_name if entry is not None else None
        sha = entry.sha256 if entry is not None else None
        size = entry.size if entry is not None else None
        if isinstance(source, HuggingFaceSource):
            url = f"{self.hf_base}/{source.repo}/resolve/{quote(source.revision)}/{quote(source.file)}"
            key = rid or "hf-" + hashlib.sha256(f"{source.repo}/{source.file}".encode()).hexdigest()[:16]
            name = cat_name or source.file.rsplit("/", 1)[-1]
            return _Plan(url, key, name, sha, size, None, source.model_dump(), rid)
        if isinstance(source, CivitaiSource):
            info = self.civitai.resolve(
                source.model_id,
                source.version_id,
                version_name=source.version_name,
                allow_pickle=self.allow_pickle,
            )
            if info.kind is not None and info.kind != kind:
                raise ModelIncompatible(
                    f"civitai:{source.model_id} is a {info.kind} on Civitai, not a {kind}",
                    details={"civitai_type": info.kind, "wanted": kind},
                )
            if sha and info.sha256 and sha != info.sha256:
                log.warning("catalogue sha256 of %s differs from Civitai's; trusting the catalogue", rid)
            key = rid or f"civitai-{source.model_id}-{info.version_id}"
            recorded = {
                "type": "civitai",
                "model_id": source.model_id,
                "version_id": info.version_id,
                "version_name": info.version_name,
            }
            civitai_name = cat_name or (info.file_name or None)
            return _Plan(
                info.download_url,
                key,
                civitai_name,
                sha or info.sha256,
                size,
                info.approx_size,
                recorded,
                rid,
            )
        if isinstance(source, UrlSource):
            key = rid or "url-" + hashlib.sha256(source.url.encode()).hexdigest()[:16]
            return _Plan(source.url, key, cat_name, sha, size, None, source.model_dump(), rid)
        return None

    def _download_locked(
        self, kind: ModelType, plan: _Plan, *, replace: LiveEntry | None
    ) -> tuple[LiveEntry, tuple[str, ...]]:
        dest_dir = self.models_dir / KIND_DIRS[kind]
        if plan.file_name is not None:
            contained_path(dest_dir, plan.file_name, what="model file name")
        safe_relative_name(plan.key.replace("/", "_"), what="download key")
        lock_dir = self.models_dir / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        wait = self.download_deadline_s if self.download_deadline_s is not None else self.lock_timeout_s * 60
        lock = FileLock(str(lock_dir / f"{plan.key}.lock"), timeout=wait)
        try:
            lock.acquire()
        except Timeout:
            raise DownloadFailed(
                f"another worker is still downloading {plan.file_name or plan.key} after {wait:.0f}s"
            ) from None
        try:
            done = self._already_done(kind, plan, replace)
            if done is not None:
                return done, ("downloaded by another worker",)
            suffixes = SAFETENSORS_EXT + (PICKLE_EXT if self.allow_pickle else ())
            request = DownloadRequest(
                url=plan.url,
                dest_dir=dest_dir,
                key=plan.key,
                file_name=plan.file_name,
                expected_sha256=plan.sha256,
                expected_size=plan.size,
                approx_size=plan.approx_size,
                allowed_suffixes=suffixes,
            )
            keep = {entry_key(kind, plan.file_name)} if plan.file_name else set()
            result = self.downloader.fetch(request, reserve=lambda needed: self._make_room(needed, keep))
            st = result.path.stat()
            found = FoundFile(kind, result.file_name, result.path, st.st_size, st.st_mtime_ns)
            # LoRAs are small: hash again for A1111's "addnet" hash; others reuse the download's sha256
            hasher = self.hasher if kind == "lora" else None
            entry = inspect_file(found, allow_pickle=self.allow_pickle, hasher=hasher)
            entry.sha256 = result.sha256
            entry.short_hash = result.sha256[:10]
            entry.source = plan.source
            entry.registry_id = plan.registry_id or match_catalogue(self.catalogue, entry)
            entry.downloaded = True
            entry.downloaded_at = self.clock()
            self._put(entry)
            return entry, (
                () if result.hash_verified else ("sha256 not published by the source; not verified",)
            )
        finally:
            lock.release()

    def _already_done(self, kind: ModelType, plan: _Plan, replace: LiveEntry | None) -> LiveEntry | None:
        """After waiting for the lock: did another worker fetch it meanwhile?"""
        registry = self.store.read()
        for entry in registry.models.values():
            if entry.kind != kind or not entry.usable:
                continue
            same_name = plan.file_name is not None and entry.file_name == plan.file_name
            same_source = entry.source == plan.source or (
                plan.registry_id is not None and entry.registry_id == plan.registry_id
            )
            if (same_name or same_source) and self._current(entry):
                if replace is not None and entry.key == replace.key and entry.mtime_ns == replace.mtime_ns:
                    continue  # the unusable file we came to replace
                if plan.sha256 is not None and self._sha256_of(entry) != plan.sha256:
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
                    continue
                return entry
        return None

    def _sha256_of(self, entry: LiveEntry) -> str | None:
        """The entry's sha256, hashing the file now (and recording it) when a scan left it unhashed."""
        if entry.sha256 is not None:
            return entry.sha256
        path = self.models_dir / KIND_DIRS[entry.kind] / entry.file_name
        try:
            digest = self.hasher(path, None, None).sha256
        except OSError:
            return None

        def record(registry: LiveRegistry) -> None:
            current = registry.models.get(entry.key)
            if current is not None and current.mtime_ns == entry.mtime_ns and current.size == entry.size:
                current.sha256, current.short_hash = digest, digest[:10]

        self.store.update(record)
        return digest

    def _make_room(self, needed: int, keep: set[str]) -> None:
        if self.quota_bytes is None:
            return
        self.flush_uses()  # the LRU order must include this process's latest uses
        pinned = {c.id for c in self.catalogue.models if c.pinned}
        victims = plan_eviction(
            self.snapshot().models.values(),
            needed=needed,
            quota_bytes=self.quota_bytes,
            pinned_ids=pinned,
            keep=keep,
        )
        for victim in victims:
            path = self.models_dir / KIND_DIRS[victim.kind] / victim.file_name
            log.warning(
                "evicting %s (%d bytes, last used %s) to fit the volume quota",
                victim.key,
                victim.size,
                victim.last_used,
            )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if victims:
            keys = {v.key for v in victims}
            self.store.update(lambda reg: [reg.models.pop(k, None) for k in keys])

    def _put(self, entry: LiveEntry) -> None:
        def put(registry: LiveRegistry) -> None:
            old = registry.models.get(entry.key)
            if old is not None:
                entry.last_used, entry.use_count = old.last_used, old.use_count
            registry.models[entry.key] = entry

        self.store.update(put)

    # ---- conversion ---------------------------------------------------------------------------------

    def convert(
        self,
        entry: LiveEntry,
        target: Target,
        *,
        half: bool = False,
        force: bool = False,
        alpha: float | None = None,
        base: str | None = None,
        progress: Progress | None = None,
    ) -> ConversionResult:
        """Convert one registered model once (see ``ConversionRunner.run``); ``base`` names its checkpoint."""
        base_entry = None
        if base is not None:
            found = self.resolve("checkpoint", base)
            if found.live is None:
                raise not_found("checkpoint", base, self.snapshot(), self.catalogue)
            base_entry = found.live
        return self.converter.run(
            entry,
            target,
            wait_s=self._conversion_wait(),
            half=half,
            force=force,
            alpha=alpha,
            base=base_entry,
            progress=progress,
        )

    def entries_below(self, path: Path) -> list[LiveEntry]:
        """Registered models at or below ``path`` (a file, a model folder or any folder on the volume)."""
        self.scan()
        resolved = path.resolve()
        found = []
        for entry in self.entries():
            location = (self.models_dir / KIND_DIRS[entry.kind] / entry.file_name).resolve()
            if location == resolved or resolved in location.parents:
                found.append(entry)
        return found

    def convert_for(
        self, kind: ModelType, file_name: str, engine: str, *, base: str | None = None
    ) -> ProvisionedModel:
        """The job path's view: the model as ``engine`` uses it, converting once when needed and allowed."""
        started = time.monotonic()
        registry = self.snapshot()
        entry = registry.models.get(entry_key(kind, file_name))
        if entry is None:
            raise ModelNotFound(f"{kind} {file_name!r} is not registered", details={"file_name": file_name})
        target = target_for_engine(entry, engine)  # type: ignore[arg-type]
        if target is None:
            return ProvisionedModel(self._facts(entry, None))
        options = options_for(target, half=False, alpha=None)
        done = existing_conversion(registry, entry, target, options)
        if done is not None and self._current(done):
            return ProvisionedModel(self._facts(done, None), converted_from=entry.file_name)
        why = _engine_gap(entry, engine)
        if not self.auto_convert:
            raise ModelIncompatible(
                f"{kind} {entry.file_name} is a {describe_layout(entry)}: {why}; convert it once with "
                f"`{conversion_hint(entry, target)}` (or set WORKER_AUTO_CONVERT=true)",
                details={"file_name": entry.file_name, "layout": entry.layout, "engine": engine},
            )
        base_entry = registry.models.get(entry_key("checkpoint", base)) if base else None
        result = self.converter.run(entry, target, wait_s=self._conversion_wait(), base=base_entry)
        if result.output is None:  # "not needed" cannot happen after target_for_engine said otherwise
            raise ConversionFailed(f"{kind} {entry.file_name}: conversion for {engine} produced nothing")
        return ProvisionedModel(
            self._facts(result.output, None),
            seconds=time.monotonic() - started,
            notes=(f"{why}: converted once to {result.output.file_name}", *result.notes),
            converted_from=entry.file_name,
            converted_now=result.status == "converted",
        )

    def remove(self, entry: LiveEntry) -> None:
        """Delete a model file or folder from the volume and forget it (the CLI's ``--remove-source``)."""
        path = contained_path(self.models_dir / KIND_DIRS[entry.kind], entry.file_name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        self.store.update(lambda registry: registry.models.pop(entry.key, None))
        log.info("removed %s from the volume", entry.key)

    def _conversion_wait(self) -> float:
        """A job waits for another worker's conversion as long as for a download; the CLI much longer."""
        return self.download_deadline_s if self.download_deadline_s is not None else self.lock_timeout_s * 60

    # ---- maintenance --------------------------------------------------------------------------------

    def verify(self, progress: Progress | None = None) -> list[VerifyProblem]:
        """Re-hash every file and compare with the cached and catalogue hashes (a full read: slow)."""
        problems = []
        registry = self.snapshot()
        by_id = {c.id: c for c in self.catalogue.models}
        for entry in sorted(registry.models.values(), key=lambda e: e.key):
            path = self.models_dir / KIND_DIRS[entry.kind] / entry.file_name
            if not entry.usable:
                problems.append(VerifyProblem(entry.key, entry.problem or "unusable"))
                continue
            try:
                hashes = self.hasher(path, None, progress)
            except OSError as exc:
                problems.append(VerifyProblem(entry.key, f"unreadable: {exc.strerror or exc}"))
                continue
            if entry.sha256 and hashes.sha256 != entry.sha256:
                problems.append(
                    VerifyProblem(entry.key, f"sha256 changed since it was recorded ({hashes.sha256[:12]}…)")
                )
            cat = by_id.get(entry.registry_id or "")
            if cat is not None and cat.sha256 and cat.sha256 != hashes.sha256:
                problems.append(VerifyProblem(entry.key, f"sha256 differs from catalogue entry {cat.id}"))
        return problems

    def gc(self) -> list[str]:
        """Remove leftovers of killed downloads, forget vanished files, and enforce the quota."""
        actions = []
        now = time.time()
        for kind_dir in KIND_DIRS.values():
            for part in _glob(self.models_dir / kind_dir, ".*.part"):
                with contextlib.suppress(OSError):
                    if now - part.stat().st_mtime > STALE_PART_S:
                        if part.is_dir():  # a killed conversion to a diffusers folder
                            shutil.rmtree(part)
                        else:
                            part.unlink()
                        actions.append(f"removed stale partial download or conversion {part.name}")
        result = self.scan()
        actions += [f"forgot {key} (file gone)" for key in result.removed]
        if self.quota_bytes is not None:
            before = set(self.store.read().models)
            self._make_room(0, set())
            actions += [f"evicted {key}" for key in sorted(before - set(self.store.read().models))]
        return actions

    # ---- helpers ------------------------------------------------------------------------------------

    def _current(self, entry: LiveEntry) -> bool:
        try:
            st = (self.models_dir / KIND_DIRS[entry.kind] / entry.file_name).stat()
        except OSError:
            return False
        return st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns

    def _ensure_usable(self, entry: LiveEntry) -> None:
        if not entry.usable:
            raise ModelIncompatible(
                f"{entry.kind} {entry.file_name} is on the volume but unusable: {entry.problem}",
                details={"file_name": entry.file_name, "problem": entry.problem},
            )

    def _facts(self, entry: LiveEntry, catalogue: CatalogueEntry | None) -> ModelFacts:
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
        )


def _engine_gap(entry: LiveEntry, engine: str) -> str:
    """Why ``engine`` cannot use ``entry`` as it is, in one clause."""
    if entry.format == "training":
        return "no engine loads a training folder"
    if entry.format == "diffusers":
        return "A1111 loads single-file checkpoints only"
    if engine == "a1111":
        return "A1111 would skip every one of its keys silently"
    return f"the {engine} engine cannot apply it"


class UsageBatch:
    """Uses (count, last time) per registry key, collected in memory and written in one batch.

    The first use after a flush starts a timer thread; the batch is written ``flush_after_s`` later, or
    at ``flush()``, or at interpreter exit. A failed write is logged and its uses kept for the next one.
    """

    def __init__(
        self, write: Callable[[dict[str, tuple[int, float]]], None], *, flush_after_s: float
    ) -> None:
        self._write = write
        self._flush_after_s = flush_after_s
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, float]] = {}
        self._timer: threading.Timer | None = None
        atexit.register(self.flush)

    def add(self, key: str, when: float) -> None:
        with self._lock:
            count, last = self._pending.get(key, (0, 0.0))
            self._pending[key] = (count + 1, max(last, when))
            if self._timer is None:
                self._timer = threading.Timer(self._flush_after_s, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if not pending:
            return
        try:
            self._write(pending)
        except Exception:  # bookkeeping must never break a job or the exit
            log.warning("could not record %d model use(s) in the registry", len(pending), exc_info=True)
            with self._lock:
                for key, (count, last) in pending.items():
                    old_count, old_last = self._pending.get(key, (0, 0.0))
                    self._pending[key] = (old_count + count, max(old_last, last))


def _check_kind(kind: str) -> None:
    if kind not in MODEL_TYPES:
        raise InputInvalid(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_TYPES)}")


def _glob(folder: Path, pattern: str) -> Iterator[Path]:
    if folder.is_dir():
        for dirpath, _dirs, _files in os.walk(folder):
            yield from Path(dirpath).glob(pattern)
