"""``ModelRegistry``: the ``ModelProvider`` the job path calls (describe, provision, convert_for, record_use).

It wires the parts of one volume's registry together and answers the job path and the CLI:

* ``Inventory`` (scan, snapshot, name index, resolution, targeted rescans) over the live registry file
  (``RegistryStore``) and the catalogue;
* ``DownloadPlanner`` (where a model comes from) and ``ModelFetcher`` (the locked, verified download),
  with ``Evictor`` keeping the volume under its quota;
* ``ConversionRunner`` (a model made usable by an engine, once per volume);
* ``UsageBatch`` (uses batched for the LRU order) and ``Maintenance`` (verify, gc, remove).

Everything that touches the network, the disk's size or time is injectable, so tests run the registry
against real files and a loopback HTTP server and drive its clock.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import InputInvalid, ModelIncompatible, ModelNotFound
from worker.model_types import MODEL_TYPES, ModelFacts, ModelType, ProvisionedModel
from worker.redaction import public_url
from worker.registry.catalogue import load_catalogue
from worker.registry.civitai import DEFAULT_API_BASE, CivitaiClient
from worker.registry.conversion_runner import ConversionRunner
from worker.registry.conversions import (
    ConversionFailed,
    ConversionResult,
    Target,
    conversion_hint,
    describe_layout,
    engine_gap,
    existing_conversion,
    options_for,
    target_for_engine,
)
from worker.registry.download import Downloader, TransferProgress
from worker.registry.download_plan import DEFAULT_HF_BASE, DownloadPlan, DownloadPlanner
from worker.registry.eviction import Evictor
from worker.registry.hashing import ByteProgress, Hasher, hash_file
from worker.registry.inventory import Inventory, ensure_usable, facts_of
from worker.registry.maintenance import Maintenance, VerifyProblem
from worker.registry.model_fetch import ModelFetcher
from worker.registry.models import Catalogue, HuggingFaceSource, LiveEntry, LiveRegistry, entry_key
from worker.registry.resolve import RemoteRef, Resolution, not_found, resolve
from worker.registry.scan import Scanner, ScanResult
from worker.registry.store import LEGACY_REGISTRY_FILE, RegistryStore
from worker.registry.usage import UsageBatch
from worker.registry.volume import KIND_DIRS
from worker.settings import WorkerSettings
from worker.url_policy import TokenRule

log = logging.getLogger(__name__)


class ModelRegistry:
    """Registry of the models on one volume (``models_dir``), shared safely by many workers.

    Args:
        models_dir: root with ``checkpoints/ loras/ embeddings/ vae/``.
        registry_path: the live registry JSON (``settings.effective_registry_path``).
        legacy_registry_path: the registry's name on volumes written by older workers, adopted when
            ``registry_path`` does not exist yet (only for the default location).
        catalogue: the parsed catalogue (``load_catalogue``).
        allowed_hosts: download allowlist (``host``, ``*.host`` or ``host:port`` patterns).
        civitai_api_base, hf_base: remote endpoints (tests point them at a loopback server).
        download_deadline_s: overall budget per download (None: only the stall timeout applies).
        quota_bytes: volume quota enabling LRU eviction (None: no quota).
        clock: timestamps, deadlines, waits and timers.
        hasher: the full-file hash function (tests count its calls).
        scan_deadline_s: budget of a rescan on the job path (hashing stops there; the next scan goes on).
        usage_flush_s: how long uses are batched in memory before one registry write (``record_use``).
    """

    def __init__(
        self,
        *,
        models_dir: Path,
        registry_path: Path,
        legacy_registry_path: Path | None = None,
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
        clock: Clock = SYSTEM_CLOCK,
        hasher: Hasher = hash_file,
        progress: bool = False,
        auto_convert: bool = True,
        scan_deadline_s: float | None = 10.0,
        usage_flush_s: float = 10.0,
    ) -> None:
        #: how this registry was built, so a job's own Hugging Face token gets a registry of its own
        self._arguments = {name: value for name, value in locals().items() if name != "self"}
        self.models_dir = models_dir
        self.hf_base = hf_base.rstrip("/")
        self.hf_token = hf_token
        self.allowed_hosts = allowed_hosts
        self.timeout_s = timeout_s
        self.catalogue = catalogue
        self.auto_convert = auto_convert
        #: a job waits for another worker's download or conversion as long as for its own; the CLI much longer
        self.wait_for_others_s = (
            download_deadline_s if download_deadline_s is not None else lock_timeout_s * 60
        )
        store = RegistryStore(
            registry_path, lock_timeout_s=lock_timeout_s, clock=clock, legacy_path=legacy_registry_path
        )
        self.inventory = Inventory(
            models_dir=models_dir,
            store=store,
            catalogue=catalogue,
            scanner=Scanner(
                models_dir=models_dir,
                store=store,
                catalogue=catalogue,
                allow_pickle=allow_pickle,
                hasher=hasher,
                clock=clock,
            ),
            hasher=hasher,
            scan_deadline_s=scan_deadline_s,
        )
        self.usage = UsageBatch(store, flush_after_s=usage_flush_s, clock=clock)
        evictor = Evictor(
            models_dir=models_dir, inventory=self.inventory, usage=self.usage, quota_bytes=quota_bytes
        )
        session = requests.Session()
        self.planner = DownloadPlanner(
            civitai=CivitaiClient(
                api_base=civitai_api_base,
                token=civitai_token,
                timeout_s=timeout_s,
                allowed_hosts=allowed_hosts,
                session=session,
            ),
            hf_base=hf_base,
            allow_pickle=allow_pickle,
        )
        tokens = []
        if civitai_token:
            tokens.append(TokenRule(("civitai.com", "*.civitai.com"), civitai_token, (civitai_api_base,)))
        if hf_token:
            tokens.append(TokenRule(("huggingface.co", "*.huggingface.co"), hf_token, (hf_base,)))
        downloader = Downloader(
            allowed_hosts=allowed_hosts,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            deadline_s=download_deadline_s,
            tokens=tuple(tokens),
            attempts=attempts,
            backoff_s=backoff_s,
            session=session,
            progress=progress,
            clock=clock,
            **({} if disk_free is None else {"disk_free": disk_free}),
        )
        self.fetcher = ModelFetcher(
            models_dir=models_dir,
            inventory=self.inventory,
            downloader=downloader,
            evictor=evictor,
            allow_pickle=allow_pickle,
            hasher=hasher,
            clock=clock,
            lock_wait_s=self.wait_for_others_s,
        )
        self.converter = ConversionRunner(
            models_dir=models_dir, inventory=self.inventory, hasher=hasher, clock=clock
        )
        self.maintenance = Maintenance(
            models_dir=models_dir, inventory=self.inventory, evictor=evictor, hasher=hasher, clock=clock
        )
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **overrides: Any) -> ModelRegistry:
        """The production wiring: everything from ``WorkerSettings``; ``overrides`` for tests and the CLI."""
        kwargs: dict[str, Any] = {
            "models_dir": settings.models_dir,
            "registry_path": settings.effective_registry_path,
            # an explicit WORKER_REGISTRY_PATH is used as it is; the default location adopts the old name
            "legacy_registry_path": None
            if settings.registry_path
            else settings.models_dir / LEGACY_REGISTRY_FILE,
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

    def with_hf_token(self, token: str) -> ModelRegistry:
        """The same registry, sending ``token`` to Hugging Face (a sync job's own ``hf_token``)."""
        return ModelRegistry(**{**self._arguments, "hf_token": token})

    # ---- reading (the inventory) --------------------------------------------------------------------

    def snapshot(self) -> LiveRegistry:
        return self.inventory.snapshot()

    def entries(self) -> list[LiveEntry]:
        return self.inventory.entries()

    def entries_below(self, path: Path) -> list[LiveEntry]:
        return self.inventory.entries_below(path)

    def scan(
        self,
        *,
        hash_files: bool = True,
        progress: ByteProgress | None = None,
        kinds: tuple[ModelType, ...] = MODEL_TYPES,
        deadline_s: float | None = None,
    ) -> ScanResult:
        return self.inventory.scan(
            hash_files=hash_files, progress=progress, kinds=kinds, deadline_s=deadline_s
        )

    def warm(self, *, deadline_s: float | None = None) -> ScanResult:
        """Start-up: one full scan (hashing new files within ``deadline_s``) and the lookup index built."""
        result = self.inventory.scan(deadline_s=deadline_s)
        self.inventory.view()
        return result

    def resolve(self, kind: ModelType, reference: str) -> Resolution:
        return self.inventory.resolve(kind, reference)

    def not_found(self, kind: ModelType, reference: str) -> ModelNotFound:
        """``ModelNotFound`` naming ``reference`` and the nearest known names."""
        return not_found(kind, reference, self.snapshot(), self.catalogue)

    def describe(self, kind: ModelType, reference: str) -> ModelFacts | None:
        """Facts about a local model (any reference form); None when it is not on the volume.

        Raises ``ModelIncompatible`` for a present but unusable file (truncated, pickle refused,
        wrong folder): never silently.
        """
        found = self.inventory.resolve(kind, reference)
        if found.live is None:
            return None
        ensure_usable(found.live)
        return facts_of(found.live, found.catalogue)

    def catalogue_file(self, kind: ModelType, reference: str) -> str | None:
        """The file name of the catalogue entry ``reference`` names (never downloads); None if none."""
        entry = self.inventory.resolve(kind, reference).catalogue
        return entry.file_name.rsplit("/", 1)[-1] if entry is not None and entry.file_name else None

    # ---- provisioning -------------------------------------------------------------------------------

    def provision(
        self,
        kind: ModelType,
        reference: str,
        *,
        progress: TransferProgress | None = None,
        file_name: str | None = None,
        sha256: str | None = None,
    ) -> ProvisionedModel | None:
        """Make the model present, downloading a catalogue entry or explicit remote reference if needed.

        ``file_name`` (a path in the kind's folder) and ``sha256`` apply to a download (a registry job's).
        """
        started = self.clock.monotonic()
        found = self._verified(self.inventory.resolve(kind, reference))
        if found.live is not None and found.live.usable:
            return ProvisionedModel(facts_of(found.live, found.catalogue))
        plan = self.planner.plan(kind, found) if found.catalogue or found.remote else None
        if plan is not None:
            plan = replace(plan, file_name=file_name or plan.file_name, sha256=plan.sha256 or sha256)
        if plan is None:
            if found.live is not None:
                ensure_usable(found.live)
            if found.catalogue is None:
                return None
            raise ModelNotFound(
                f"{kind} {reference!r} is catalogue entry {found.catalogue.id!r} but is not on the volume "
                f"and the catalogue has no download source for it; copy it into "
                f"{KIND_DIRS[kind]}/ or add a source to the catalogue",
                details={"reference": reference, "registry_id": found.catalogue.id},
            )
        return self._fetched(kind, plan, found.live, started, progress)

    def fetch_url(
        self,
        kind: ModelType,
        url: str,
        *,
        file_name: str | None = None,
        sha256: str | None = None,
        progress: TransferProgress | None = None,
    ) -> ProvisionedModel:
        """Download a plain URL (a registry job's) into the kind's folder: the allowlist, quota and checks
        of every download; the source is recorded without credentials or query string."""
        started = self.clock.monotonic()
        shown = public_url(url)
        plan = DownloadPlan(
            url=url,
            key="url-" + hashlib.sha256(shown.encode()).hexdigest()[:16],
            file_name=file_name,
            sha256=sha256,
            size=None,
            approx_size=None,
            source={"type": "url", "url": shown},
            registry_id=None,
        )
        for entry in self.snapshot().models.values():  # pulled before (by this worker or another)
            same = entry.kind == kind and entry.source == plan.source and entry.usable
            wanted = sha256 in (None, entry.sha256) and file_name in (None, entry.file_name)
            if same and wanted and self.inventory.current(entry):
                return ProvisionedModel(facts_of(entry, None))
        return self._fetched(kind, plan, None, started, progress)

    def fetch_hf_file(
        self,
        kind: ModelType,
        source: HuggingFaceSource,
        *,
        file_name: str,
        sha256: str | None,
        size: int | None,
        progress: TransferProgress | None = None,
    ) -> ProvisionedModel:
        """Download one file of a Hugging Face repository (a sync job's) to ``file_name`` in the kind's
        folder, verified against the sha256 and size the repository publishes."""
        started = self.clock.monotonic()
        plan = self.planner.plan(kind, Resolution(remote=RemoteRef(source)))
        assert plan is not None  # a Hugging Face source always has a URL
        plan = replace(plan, file_name=file_name, sha256=sha256, size=size)
        return self._fetched(kind, plan, None, started, progress)

    def _fetched(
        self,
        kind: ModelType,
        plan: DownloadPlan,
        replace_entry: LiveEntry | None,
        started: float,
        progress: TransferProgress | None,
    ) -> ProvisionedModel:
        entry, notes = self.fetcher.fetch(kind, plan, replace=replace_entry, progress=progress)
        ensure_usable(entry)
        return ProvisionedModel(
            facts_of(entry, self.inventory.catalogue_entry(entry.registry_id)),
            downloaded=True,
            seconds=self.clock.monotonic() - started,
            notes=notes,
        )

    def kind_of(self, reference: str) -> ModelType:
        """The kind ``reference`` names: a file on the volume, a catalogue entry, or Civitai's model type."""
        snapshot = self.snapshot()
        remote = None
        for candidate in MODEL_TYPES:
            found = resolve(candidate, reference, snapshot, self.catalogue)
            if found.live or found.catalogue:
                return candidate
            remote = found.remote
        kind = self.planner.remote_kind(remote) if remote is not None else None
        if kind is None:
            raise InputInvalid(f"cannot tell which kind {reference!r} is; give its kind")
        return kind

    def conversion_sources(
        self, src: str, kind: ModelType | None, roots: tuple[Path, ...]
    ) -> list[LiveEntry]:
        """What ``src`` names for a conversion: a path under one of ``roots`` on the volume (everything at or
        below it), else a registry reference."""
        path = Path(src).expanduser()
        candidates = [path] if path.is_absolute() else [root / path for root in roots]
        for candidate in candidates:
            if candidate.exists():
                if self.models_dir.resolve() not in candidate.resolve().parents:
                    raise InputInvalid(f"{src} is not on the volume ({self.models_dir}); copy it there first")
                below = [e for e in self.entries_below(candidate) if kind is None or e.kind == kind]
                if not below:
                    raise InputInvalid(f"{src} holds no model the registry recognises")
                return below
        for candidate_kind in [kind] if kind else list(MODEL_TYPES):
            found = self.resolve(candidate_kind, src)
            if found.live is not None:
                return [found.live]
        raise self.not_found(kind or "checkpoint", src)

    def _verified(self, found: Resolution) -> Resolution:
        """A local file linked to a catalogue entry by name only is that entry only if its sha256 agrees."""
        cat = found.catalogue
        if found.live is None or cat is None or not cat.sha256:
            return found
        if self.inventory.sha256_of(found.live) == cat.sha256:
            return found
        log.warning("%s is not catalogue entry %s (its sha256 differs); fetching it", found.live.key, cat.id)
        return Resolution(None, cat, found.remote)

    def record_use(self, kind: ModelType, file_name: str) -> None:
        """Note a use (last_used, use_count): the LRU order eviction follows.

        Uses are batched in memory and written by a timer (one locked write per ``usage_flush_s``), so a
        job never pays for rewriting the registry; ``flush_uses`` writes now.
        """
        self.usage.add(entry_key(kind, file_name))

    def flush_uses(self) -> None:
        """Write the batched uses now (at exit, before eviction, in tests)."""
        self.usage.flush()

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
        progress: ByteProgress | None = None,
    ) -> ConversionResult:
        """Convert one registered model once (see ``ConversionRunner.run``); ``base`` names its checkpoint."""
        base_entry = None
        if base is not None:
            found = self.inventory.resolve("checkpoint", base)
            if found.live is None:
                raise self.not_found("checkpoint", base)
            base_entry = found.live
        return self.converter.run(
            entry,
            target,
            wait_s=self.wait_for_others_s,
            half=half,
            force=force,
            alpha=alpha,
            base=base_entry,
            progress=progress,
        )

    def convert_for(
        self, kind: ModelType, file_name: str, engine: str, *, base: str | None = None
    ) -> ProvisionedModel:
        """The job path's view: the model as ``engine`` uses it, converting once when needed and allowed."""
        started = self.clock.monotonic()
        registry = self.snapshot()
        entry = registry.models.get(entry_key(kind, file_name))
        if entry is None:
            raise ModelNotFound(f"{kind} {file_name!r} is not registered", details={"file_name": file_name})
        target = target_for_engine(entry, engine)  # type: ignore[arg-type]
        if target is None:
            return ProvisionedModel(facts_of(entry, None))
        done = existing_conversion(registry, entry, target, options_for(target, half=False, alpha=None))
        if done is not None and self.inventory.current(done):
            return ProvisionedModel(facts_of(done, None), converted_from=entry.file_name)
        why = engine_gap(entry, engine)
        if not self.auto_convert:
            raise ModelIncompatible(
                f"{kind} {entry.file_name} is a {describe_layout(entry)}: {why}; convert it once with "
                f"`{conversion_hint(entry, target)}` (or set WORKER_AUTO_CONVERT=true)",
                details={"file_name": entry.file_name, "layout": entry.layout, "engine": engine},
            )
        base_entry = registry.models.get(entry_key("checkpoint", base)) if base else None
        result = self.converter.run(entry, target, wait_s=self.wait_for_others_s, base=base_entry)
        if result.output is None:  # "not needed" cannot happen after target_for_engine said otherwise
            raise ConversionFailed(f"{kind} {entry.file_name}: conversion for {engine} produced nothing")
        return ProvisionedModel(
            facts_of(result.output, None),
            seconds=self.clock.monotonic() - started,
            notes=(f"{why}: converted once to {result.output.file_name}", *result.notes),
            converted_from=entry.file_name,
            converted_now=result.status == "converted",
        )

    # ---- maintenance --------------------------------------------------------------------------------

    def verify(self, progress: ByteProgress | None = None) -> list[VerifyProblem]:
        return self.maintenance.verify(progress)

    def gc(self) -> list[str]:
        return self.maintenance.gc()

    def remove(self, entry: LiveEntry) -> None:
        self.maintenance.remove(entry)

    def evict_to(self, quota_bytes: int, *, dry_run: bool = False) -> list[LiveEntry]:
        """Least recently used downloads deleted until the registered total fits ``quota_bytes``."""
        return self.maintenance.evictor.evict_to(quota_bytes, dry_run=dry_run)
