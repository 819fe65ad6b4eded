"""``RegistryJobs``: registry jobs (list, pull, sync, convert, remove, evict) carried out on one volume.

It implements ``worker.model_job_types.ModelJobs``, the job path's only view of it, and knows neither
RunPod nor the engine: progress goes to a callback, cancellation is polled between chunks, and the kinds
whose folders changed are returned for the caller to rescan. Every download is the registry's own
(allowlist, quota, sha256, temp file + rename, per-model lock), so a job that ends partway leaves no
partial file under a final name; its error says what was done before it stopped.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import Cancelled, DownloadFailed, InputInvalid, ModelIncompatible, WorkerError
from worker.model_job_types import (
    ConvertAction,
    EvictAction,
    ListAction,
    ModelJobOutcome,
    ProgressReport,
    PullAction,
    RemoveAction,
    SyncAction,
)
from worker.model_types import MODEL_TYPES, ModelType, ProvisionedModel
from worker.redaction import public_url
from worker.registry.conversions import ConversionFailed, default_target, engine_gap
from worker.registry.hf_repo import RepoFile, list_repo_files
from worker.registry.job_paths import VolumeTarget, kind_of_folder, volume_target
from worker.registry.model_fetch import UNVERIFIED
from worker.registry.models import HuggingFaceSource, LiveEntry, entry_key
from worker.registry.names import safe_relative_name
from worker.registry.registry import ModelRegistry
from worker.registry.sync_folder import (
    FolderPlan,
    FolderSync,
    config_refusal,
    folder_of,
    model_folders,
    place_folder,
)
from worker.registry.volume import KIND_DIRS, MODEL_EXT, PICKLE_EXT, SAFETENSORS_EXT
from worker.url_policy import TokenRule

log = logging.getLogger(__name__)

#: skipped files listed one by one in a sync's output; the rest only counted
MAX_LISTED_SKIPS = 50
NOT_IN_A_MODEL_FOLDER = (
    "not in a model folder (checkpoints/, loras/, embeddings/, vae/, "
    "or A1111's Stable-diffusion/, Lora/, VAE/)"
)

Action = ListAction | PullAction | RemoveAction | EvictAction | ConvertAction | SyncAction


class JobProgress:
    """Files and bytes of one job, sent to ``report`` at most every ``interval_s`` with an ETA; polls
    ``cancelled`` at every chunk and stops the job with ``Cancelled`` naming what was done."""

    def __init__(
        self,
        action: str,
        report: ProgressReport,
        cancelled: Callable[[], bool],
        *,
        clock: Clock,
        interval_s: float,
    ) -> None:
        self.action = action
        self._report = report
        self._cancelled = cancelled
        self._clock = clock
        self._interval_s = interval_s
        self._started = clock.monotonic()
        self._last_sent: float | None = None
        self.files_total = 0
        self.bytes_total: int | None = None
        self.done: list[str] = []
        self._bytes_done = 0  # of finished files
        self._in_flight = 0

    def check(self) -> None:
        if self._cancelled():
            raise Cancelled(f"registry {self.action} cancelled; {self.summary()}")

    def transfer(self, name: str) -> Callable[[int, int | None], None]:
        """A download's progress callback (bytes received so far of ``total``)."""

        def on_bytes(received: int, total: int | None) -> None:
            self.check()
            self._in_flight = received
            if self.files_total <= 1 and total is not None:
                self.bytes_total = total
            self._send(name)

        return on_bytes

    def counter(self, name: str) -> Callable[[int], None]:
        """A conversion's progress callback (bytes just processed)."""

        def on_bytes(count: int) -> None:
            self.check()
            self._in_flight += count
            self._send(name)

        return on_bytes

    def finished(self, name: str, size: int) -> None:
        self.done.append(name)
        self._bytes_done += size
        self._in_flight = 0
        self._send(name, force=True)

    def summary(self) -> str:
        if not self.done:
            return "nothing was done"
        shown = ", ".join(self.done[:10]) + (
            f" and {len(self.done) - 10} more" if len(self.done) > 10 else ""
        )
        return f"done before it stopped: {shown}"

    def _send(self, name: str, *, force: bool = False) -> None:
        now = self._clock.monotonic()
        if not force and self._last_sent is not None and now - self._last_sent < self._interval_s:
            return
        self._last_sent = now
        done = self._bytes_done + self._in_flight
        elapsed = now - self._started
        eta = None
        if self.bytes_total and done and elapsed > 0:
            eta = round(max(0.0, (self.bytes_total - done) / (done / elapsed)), 1)
        update = {
            "action": self.action,
            "file": name,
            "files_done": len(self.done),
            "files_total": self.files_total,
            "bytes_done": done,
            "bytes_total": self.bytes_total,
            "eta_s": eta,
        }
        try:
            self._report({"registry": update})
        except Exception:  # a progress update must never fail the job
            log.warning("progress update failed", exc_info=True)


def _stopped(exc: WorkerError, progress: JobProgress, where: str) -> WorkerError:
    """The same error, saying where the job stopped and what it had done (``Cancelled`` already does)."""
    if isinstance(exc, Cancelled):
        return exc
    return type(exc)(
        f"{exc.message}; {progress.action} stopped at {where}; {progress.summary()}", details=exc.details
    )


class RegistryJobs:
    """Runs registry jobs against one ``ModelRegistry``.

    Args:
        registry: the volume's registry (the same one jobs provision through).
        engine: ``a1111`` or ``embedded``: whether a model is usable as it is depends on it.
        interval_s: the least time between two progress updates.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        engine: str,
        interval_s: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        session: requests.Session | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.interval_s = interval_s
        self.clock = clock
        self.session = session or requests.Session()

    def run(
        self, action: Action, *, report: ProgressReport, cancelled: Callable[[], bool]
    ) -> ModelJobOutcome:
        progress = JobProgress(action.action, report, cancelled, clock=self.clock, interval_s=self.interval_s)
        progress.check()
        if isinstance(action, ListAction):
            return self._list(action)
        if isinstance(action, PullAction):
            return self._pull(action, progress)
        if isinstance(action, SyncAction):
            return self._sync(action, progress)
        if isinstance(action, ConvertAction):
            return self._convert(action, progress)
        if isinstance(action, RemoveAction):
            return self._remove(action)
        return self._evict(action)

    # ---- list ---------------------------------------------------------------------------------------

    def _list(self, action: ListAction) -> ModelJobOutcome:
        registry = self.registry
        registry.inventory.rescan_changed()
        kinds = [action.kind] if action.kind else list(MODEL_TYPES)
        models: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        present_ids = set()
        for entry in registry.entries():
            if entry.kind in models:
                models[entry.kind].append(self._describe(entry))
                present_ids.add(entry.registry_id)
        absent = [
            {
                "id": c.id,
                "kind": c.kind,
                "name": c.name,
                "architecture": c.architecture,
                "source": c.source.type,
            }
            for c in registry.catalogue.models
            if c.kind in kinds and c.id not in present_ids
        ]
        output = {
            "action": "list",
            "engine": self.engine,
            "models": models,
            "counts": {kind: len(items) for kind, items in models.items()},
            "total_bytes": sum(item["size"] for items in models.values() for item in items),
            "catalogue_not_present": absent,
        }
        return ModelJobOutcome(output)

    def _describe(self, entry: LiveEntry) -> dict[str, Any]:
        usable, reason = entry.usable, entry.problem
        if usable and entry.usable_by is not None and self.engine not in entry.usable_by:
            usable = False
            reason = (
                f"{engine_gap(entry, self.engine)}: converted once when a job names it "
                f"(WORKER_AUTO_CONVERT), or now with a registry convert job"
            )
        return {
            "file_name": entry.file_name,
            "path": f"{KIND_DIRS[entry.kind]}/{entry.file_name}",
            "size": entry.size,
            "sha256": entry.sha256,
            "short_hash": entry.short_hash,
            "architecture": entry.architecture,
            "format": entry.format,
            "layout": entry.layout,
            "usable": usable,
            "reason": reason,
            "usable_by": entry.usable_by,
            "registry_id": entry.registry_id,
            "converted_from": entry.lineage.source if entry.lineage else None,
            "downloaded": entry.downloaded,
            "last_used": entry.last_used,
            "use_count": entry.use_count,
        }

    # ---- pull ---------------------------------------------------------------------------------------

    def _pull(self, action: PullAction, progress: JobProgress) -> ModelJobOutcome:
        registry = self.registry
        target = volume_target(registry.models_dir, action.dest) if action.dest else None
        kind = _kind_for(action.kind, target, action.dest)
        is_url = action.ref.lower().startswith(("http://", "https://"))
        file_name = _dest_name(target, action.ref, is_url)
        shown = public_url(action.ref) if is_url else action.ref
        progress.files_total = 1
        if is_url and kind is None:
            raise InputInvalid(
                f"pull of {shown} needs `kind` or a `dest` inside a model folder: which folder does it go to?"
            )
        try:
            if is_url:
                assert kind is not None
                got = registry.fetch_url(
                    kind,
                    action.ref,
                    file_name=file_name,
                    sha256=action.sha256,
                    progress=progress.transfer(shown),
                )
            else:
                kind = kind or registry.kind_of(action.ref)
                found = registry.provision(
                    kind,
                    action.ref,
                    progress=progress.transfer(shown),
                    file_name=file_name,
                    sha256=action.sha256,
                )
                if found is None:
                    raise registry.not_found(kind, action.ref)
                got = found
        except WorkerError as exc:
            raise _stopped(exc, progress, shown) from None
        progress.finished(shown, got_size := self._size_of(got))
        if action.sha256 and got.facts.sha256 != action.sha256.lower():
            raise ModelIncompatible(
                f"{got.facts.kind} {got.facts.file_name} is already on the volume with sha256 "
                f"{(got.facts.sha256 or '?')[:12]}…, not the {action.sha256[:12]}… asked for; "
                "remove it first",
                details={"file_name": got.facts.file_name, "sha256": got.facts.sha256},
            )
        output = self._pulled(got, shown, got_size)
        return ModelJobOutcome(output, changed=(got.facts.kind,) if got.downloaded else ())

    def _size_of(self, got: ProvisionedModel) -> int:
        entry = self.registry.snapshot().models.get(entry_key(got.facts.kind, got.facts.file_name))
        return entry.size if entry else 0

    def _pulled(self, got: ProvisionedModel, shown: str, size: int) -> dict[str, Any]:
        facts = got.facts
        return {
            "action": "pull",
            "ref": shown,
            "kind": facts.kind,
            "file_name": facts.file_name,
            "path": f"{KIND_DIRS[facts.kind]}/{facts.file_name}",
            "size": size,
            "sha256": facts.sha256,
            "architecture": facts.architecture,
            "downloaded": got.downloaded,
            "sha256_verified": UNVERIFIED not in got.notes if got.downloaded else None,
            "seconds": round(got.seconds, 3),
            "notes": list(got.notes),
        }

    # ---- sync ---------------------------------------------------------------------------------------

    def _sync(self, action: SyncAction, progress: JobProgress) -> ModelJobOutcome:
        token = action.hf_token.get_secret_value() if action.hf_token else None
        registry = self.registry.with_hf_token(token) if token else self.registry
        target = volume_target(registry.models_dir, action.dest) if action.dest else VolumeTarget(None, "")
        if action.kind is not None:
            target = VolumeTarget(_kind_for(action.kind, target, action.dest), target.sub)
        tokens = (
            (TokenRule(("huggingface.co", "*.huggingface.co"), registry.hf_token, (registry.hf_base,)),)
            if registry.hf_token
            else ()
        )
        files = list_repo_files(
            self.session,
            hf_base=registry.hf_base,
            repo=action.repo,
            revision=action.revision,
            folder=action.folder,
            tokens=tokens,
            allowed_hosts=registry.allowed_hosts,
            timeout_s=registry.timeout_s,
        )
        folders, files, folder_skips = self._folder_plans(action, target, files)
        planned, skipped = self._sync_plan(action, target, files)
        skipped = folder_skips + skipped
        progress.files_total = len(planned) + len(folders)
        progress.bytes_total = sum(f.size or 0 for _, _, f in planned) + sum(
            f.size or 0 for plan in folders for _, f in plan.files
        )
        downloaded: list[str] = []
        present: list[str] = []
        self._sync_folders(registry, action, folders, progress, (downloaded, present))
        for kind, name, repo_file in planned:
            path = f"{KIND_DIRS[kind]}/{name}"
            try:
                progress.check()
                status = self._sync_file(registry, action, kind, name, repo_file, progress.transfer(path))
            except WorkerError as exc:
                raise _stopped(exc, progress, path) from None
            (downloaded if status else present).append(path)
            progress.finished(path, repo_file.size or 0)
        output = {
            "action": "sync",
            "repo": action.repo,
            "revision": action.revision,
            "downloaded": downloaded,
            "present": present,
            "skipped": skipped[:MAX_LISTED_SKIPS],
            "skipped_count": len(skipped),
        }
        places = [(kind, f"{KIND_DIRS[kind]}/{name}") for kind, name, _ in planned]
        places += [(plan.kind, plan.path) for plan in folders]
        changed = tuple(sorted({kind for kind, path in places if path in downloaded}))
        return ModelJobOutcome(output, changed=changed)

    def _folder_plans(
        self, action: SyncAction, target: VolumeTarget, files: list[RepoFile]
    ) -> tuple[list[FolderPlan], list[RepoFile], list[dict[str, str]]]:
        """The repository's model folders (diffusers, PEFT), each synced whole; the files outside them; and
        the files of a model folder that are not synced, with why."""
        prefix = (action.folder or "").strip("/")
        rels = {f.path: f.path[len(prefix) + 1 :] if prefix else f.path for f in files}
        default_name = (prefix or action.repo).rsplit("/", 1)[-1]
        plans: list[FolderPlan] = []
        skipped: list[dict[str, str]] = []
        taken: set[str] = set()
        for folder in model_folders(list(rels.values())):
            members: list[tuple[str, RepoFile]] = []
            for repo_file in files:
                inner = folder_of(rels[repo_file.path], folder)
                if inner is None:
                    continue
                taken.add(repo_file.path)
                why = _member_refusal(action.include, inner, repo_file)
                if why is None:
                    members.append((inner, repo_file))
                else:
                    skipped.append({"file": repo_file.path, "reason": why})
            try:
                kind, name = place_folder(target, folder, default_name)
            except InputInvalid as exc:
                skipped.append({"file": folder.root or prefix or action.repo, "reason": exc.message})
                continue
            if any(inner.lower().endswith(SAFETENSORS_EXT) for inner, _ in members):
                plans.append(FolderPlan(kind, name, tuple(members)))
        return plans, [f for f in files if f.path not in taken], skipped

    def _sync_folders(
        self,
        registry: ModelRegistry,
        action: SyncAction,
        folders: list[FolderPlan],
        progress: JobProgress,
        into: tuple[list[str], list[str]],
    ) -> None:
        """Each model folder whole, under a hidden name until complete (``sync_folder``)."""
        syncer = FolderSync(registry, repo=action.repo, revision=action.revision)
        for plan in folders:
            try:
                progress.check()
                status = syncer.sync(plan, progress.transfer)
            except WorkerError as exc:
                raise _stopped(exc, progress, plan.path) from None
            into[0 if status else 1].append(plan.path)
            progress.finished(plan.path, sum(f.size or 0 for _, f in plan.files))

    def _sync_plan(
        self, action: SyncAction, target: VolumeTarget, files: list[RepoFile]
    ) -> tuple[list[tuple[ModelType, str, RepoFile]], list[dict[str, str]]]:
        """Which repository files go where (kind, name in its folder), and which are skipped and why."""
        suffixes = SAFETENSORS_EXT + (PICKLE_EXT if self.registry.fetcher.allow_pickle else ())
        prefix = (action.folder or "").strip("/")
        planned: list[tuple[ModelType, str, RepoFile]] = []
        skipped: list[dict[str, str]] = []
        for repo_file in files:
            rel = repo_file.path[len(prefix) + 1 :] if prefix else repo_file.path
            if not any(
                fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], p) for p in action.include
            ):
                continue
            why = self._placement(target, rel, suffixes)
            if isinstance(why, str):
                skipped.append({"file": repo_file.path, "reason": why})
            else:
                planned.append((*why, repo_file))
        return planned, skipped

    @staticmethod
    def _placement(target: VolumeTarget, rel: str, suffixes: tuple[str, ...]) -> tuple[ModelType, str] | str:
        if not rel.lower().endswith(suffixes):
            return f"not a model file ({', '.join(suffixes)})"
        kind, name = target.kind, f"{target.sub}/{rel}" if target.sub else rel
        if kind is None:
            top, _, name = rel.partition("/")
            kind = kind_of_folder(top) if name else None
            if kind is None:
                return NOT_IN_A_MODEL_FOLDER
        try:
            return kind, safe_relative_name(name, what="synced file name")
        except InputInvalid as exc:
            return exc.message

    def _sync_file(
        self,
        registry: ModelRegistry,
        action: SyncAction,
        kind: ModelType,
        name: str,
        repo_file: RepoFile,
        on_bytes: Callable[[int, int | None], None],
    ) -> bool:
        """Download one file unless the same one is there already; True when it was downloaded."""
        existing = registry.resolve(kind, name).live
        if existing is not None and existing.file_name == name and registry.inventory.current(existing):
            have = registry.inventory.sha256_of(existing)
            if repo_file.sha256 is None or have == repo_file.sha256:
                return False
            raise ModelIncompatible(
                f"{KIND_DIRS[kind]}/{name} is already on the volume with another sha256 "
                f"({(have or '?')[:12]}…, "
                f"the repository has {repo_file.sha256[:12]}…); remove it first",
                details={"file_name": name},
            )
        source = HuggingFaceSource(repo=action.repo, file=repo_file.path, revision=action.revision)
        got = registry.fetch_hf_file(
            kind, source, file_name=name, sha256=repo_file.sha256, size=repo_file.size, progress=on_bytes
        )
        return got.downloaded

    # ---- convert, remove, evict ---------------------------------------------------------------------

    def _convert(self, action: ConvertAction, progress: JobProgress) -> ModelJobOutcome:
        registry = self.registry
        entries = registry.conversion_sources(action.src, action.kind, (registry.models_dir,))
        single = len(entries) == 1
        results: list[dict[str, Any]] = []
        changed: set[ModelType] = set()
        for entry in entries:
            target = action.to or default_target(entry)
            if target is None or (not single and entry.lineage is not None):
                continue  # runs on both engines as it is, or an earlier conversion's output in the folder
            try:
                progress.check()
                if not entry.usable:
                    raise ConversionFailed(
                        f"{entry.kind} {entry.file_name} cannot be converted: {entry.problem}"
                    )
                result = registry.convert(
                    entry,
                    target,
                    half=action.half,
                    force=action.force,
                    alpha=action.alpha,
                    base=action.base,
                    progress=progress.counter(entry.key),
                )
            except WorkerError as exc:
                raise _stopped(exc, progress, entry.key) from None
            output = result.output
            results.append(
                {
                    "source": entry.key,
                    "target": target,
                    "status": result.status,
                    "output": output.key if output else None,
                    "sha256": output.sha256 if output else None,
                    "seconds": round(result.seconds, 3),
                    "notes": list(result.notes),
                }
            )
            if output is not None and result.status == "converted":
                changed.add(output.kind)
            progress.finished(entry.key, entry.size)
        if not results:
            raise InputInvalid(
                f"nothing to convert in {action.src!r}: every model there runs on both engines as it is"
            )
        return ModelJobOutcome({"action": "convert", "conversions": results}, changed=tuple(sorted(changed)))

    def _remove(self, action: RemoveAction) -> ModelJobOutcome:
        entry = self._one_entry(action.ref, action.kind)
        self.registry.remove(entry)
        output = {
            "action": "remove",
            "removed": f"{KIND_DIRS[entry.kind]}/{entry.file_name}",
            "size": entry.size,
        }
        return ModelJobOutcome(output, changed=(entry.kind,))

    def _one_entry(self, ref: str, kind: ModelType | None) -> LiveEntry:
        """The model ``ref`` names: a path on the volume, or a reference within ``kind`` (else every kind)."""
        registry = self.registry
        if Path(ref).is_absolute() or ref.split("/", 1)[0] in KIND_DIRS.values():
            place = volume_target(registry.models_dir, ref)
            if place.kind is None or not place.sub:
                raise InputInvalid(f"{ref!r} is a folder of the volume, not a model in it")
            kind, ref = _kind_for(kind, place, ref), place.sub
        hits = [
            found.live for k in ([kind] if kind else MODEL_TYPES) if (found := registry.resolve(k, ref)).live
        ]
        if not hits:
            raise registry.not_found(kind or "checkpoint", ref)
        if len(hits) > 1:
            names = ", ".join(f"{h.kind} {h.file_name}" for h in hits if h)
            raise InputInvalid(f"{ref!r} names several models ({names}); give `kind`")
        assert hits[0] is not None
        return hits[0]

    def _evict(self, action: EvictAction) -> ModelJobOutcome:
        quota = int(action.target_gb * 1e9)
        registry = self.registry
        registry.inventory.rescan_changed()  # files copied in since count (and are never evicted)
        try:
            victims = registry.evict_to(quota, dry_run=action.dry_run)
        except DownloadFailed:
            entries = registry.entries()
            total = sum(e.size for e in entries)
            evictable = sum(e.size for e in entries if e.downloaded)
            raise InputInvalid(
                f"cannot evict down to {action.target_gb} GB ({quota} bytes): {total} bytes are registered "
                f"and only the {evictable} bytes of unpinned downloads may be evicted (files copied in by "
                "hand and pinned catalogue models never are); remove files by name instead",
                details={"total_bytes": total, "evictable_bytes": evictable},
            ) from None
        total_after = sum(e.size for e in registry.entries()) - (
            sum(v.size for v in victims) if action.dry_run else 0
        )
        output = {
            "action": "evict",
            "dry_run": action.dry_run,
            "evicted": [f"{KIND_DIRS[v.kind]}/{v.file_name}" for v in victims],
            "freed_bytes": sum(v.size for v in victims),
            "total_bytes_after": total_after,
        }
        changed = () if action.dry_run else tuple(sorted({v.kind for v in victims}))
        return ModelJobOutcome(output, changed=changed)


def _kind_for(kind: ModelType | None, target: VolumeTarget | None, dest: str | None) -> ModelType | None:
    """The job's kind and its destination folder's, which must agree."""
    if target is None or target.kind is None:
        return kind
    if kind is not None and kind != target.kind:
        raise InputInvalid(f"kind {kind!r} disagrees with {dest!r}, which is in the {target.kind} folder")
    return target.kind


def _member_refusal(include: list[str], inner: str, repo_file: RepoFile) -> str | None:
    """Why a file of a model folder is not synced (weights: not picked by ``include``), or None."""
    try:
        safe_relative_name(inner, what="synced file name")
    except InputInvalid as exc:
        return exc.message
    if not inner.lower().endswith(SAFETENSORS_EXT):
        return config_refusal(inner, repo_file)
    base = inner.rsplit("/", 1)[-1]
    if not any(fnmatch.fnmatch(inner, p) or fnmatch.fnmatch(base, p) for p in include):
        return "weights not picked by include"
    if repo_file.sha256 is None and repo_file.git_oid is None:
        return "the repository lists no sha256 or git oid to verify it with"
    return None


def _dest_name(target: VolumeTarget | None, ref: str, is_url: bool) -> str | None:
    """The file name a pull writes in its kind's folder: ``dest``'s, else the source's (None: its own)."""
    if target is None or not target.sub:
        return None
    if target.kind is None:
        return None
    if target.sub.lower().endswith(MODEL_EXT):
        return target.sub
    base = unquote(urlsplit(ref).path).rsplit("/", 1)[-1] if is_url else ref.rsplit("/", 1)[-1]
    if not base.lower().endswith(MODEL_EXT):
        raise InputInvalid(
            f"dest {target.sub!r} is a folder and {public_url(ref) if is_url else ref!r} names no file: "
            "give dest as a path ending in the file name"
        )
    return f"{target.sub}/{base}"
