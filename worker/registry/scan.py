"""Walk ``models_dir/{checkpoints,loras,embeddings,vae}`` and describe every model file.

Only headers are read to detect kind and architecture; hashing is the one full read, done once per
(size, mtime) and cached in the registry, so a warm scan is a ``stat`` per file. The slow part
(hashing) runs outside the registry lock; only the merge takes it. Only regular files inside the models
folder are ever opened (``file_policy``); hashing stops at the scan's deadline, leaving the rest for the
next scan.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.model_types import MODEL_TYPES, ModelType
from worker.registry.detect import detect
from worker.registry.file_policy import real_roots, unreadable_reason
from worker.registry.hashing import Hasher, Progress, hash_file
from worker.registry.layouts import (
    ENGINES,
    LayoutError,
    folder_files,
    folder_stat,
    inspect_diffusers_folder,
    inspect_training_folder,
    is_diffusers_folder,
    is_training_folder,
    lora_facts,
)
from worker.registry.models import LiveEntry, LiveRegistry, entry_key
from worker.registry.safetensors_header import HeaderError, read_header

log = logging.getLogger(__name__)

#: kind -> folder under models_dir (A1111 is started with these as --ckpt-dir, --lora-dir, ...)
KIND_DIRS: dict[ModelType, str] = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "embedding": "embeddings",
    "vae": "vae",
}
SAFETENSORS_EXT = (".safetensors",)
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin")
MODEL_EXT = SAFETENSORS_EXT + PICKLE_EXT

_KEEP_META = ("ss_output_name", "ss_base_model_version", "sshs_model_hash", "ss_sd_model_name")
_MAX_META_CHARS = 512


@dataclass(frozen=True)
class FoundFile:
    kind: ModelType
    file_name: str  # relative to the kind folder, POSIX separators
    path: Path
    size: int
    mtime_ns: int
    folder: bool = False  # a model folder (diffusers pipeline, LoRA training folder), seen as one unit
    #: why the file must not be opened (not a regular file, symlink out of the folder), else None
    problem: str | None = None


class ScanDeadline(Exception):
    """Raised from the hashing loop when the scan's deadline has passed."""


def _unit_folder(kind: ModelType, folder: Path) -> bool:
    """A folder that is one model: a diffusers pipeline (checkpoints/) or a LoRA training folder (loras/)."""
    if kind == "checkpoint":
        return is_diffusers_folder(folder)
    return kind == "lora" and is_training_folder(folder)


def iter_model_files(
    models_dir: Path,
    kinds: Iterable[ModelType] = MODEL_TYPES,
    folder_mtimes: dict[str, int] | None = None,
) -> Iterator[FoundFile]:
    """Every model file or model folder below the kind folders; hidden names (our temp and lock files) are
    skipped, and nothing inside a model folder is listed on its own.

    Directory symlinks are not followed; a file that is not a regular file inside the models folder comes
    with its ``problem`` and is never opened. ``folder_mtimes`` collects every walked folder's mtime.
    """
    for kind in kinds:
        root = models_dir / KIND_DIRS[kind]
        if not root.is_dir():
            continue
        roots = real_roots(models_dir, root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if folder_mtimes is not None:
                try:
                    folder_mtimes[dirpath] = os.stat(dirpath).st_mtime_ns
                except OSError:
                    folder_mtimes[dirpath] = -1
            here = Path(dirpath)
            if here != root and _unit_folder(kind, here):
                dirnames[:] = []
                try:
                    size, mtime_ns = folder_stat(here)
                except OSError:
                    continue
                yield FoundFile(kind, here.relative_to(root).as_posix(), here, size, mtime_ns, folder=True)
                continue
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(MODEL_EXT):
                    continue
                path = Path(dirpath) / name
                problem = unreadable_reason(path, roots)
                try:
                    st = os.stat(path) if problem is None else os.lstat(path)
                except OSError:
                    continue
                rel = path.relative_to(root).as_posix()
                yield FoundFile(kind, rel, path, st.st_size, st.st_mtime_ns, problem=problem)


def _kept_metadata(metadata: dict[str, str]) -> dict[str, str]:
    kept = {}
    for key, value in metadata.items():
        if key in _KEEP_META or (key.startswith("modelspec.") and key != "modelspec.thumbnail"):
            kept[key] = value[:_MAX_META_CHARS]
    return kept


def inspect_file(
    found: FoundFile,
    *,
    allow_pickle: bool,
    hasher: Hasher | None = hash_file,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> LiveEntry:
    """Describe one file: header-based detection, usability, and (when ``hasher``) its hashes.

    ``deadline`` (``time.monotonic()``): past it the hash is left out (the next scan computes it).
    """
    fields: dict[str, Any] = {
        "kind": found.kind,
        "file_name": found.file_name,
        "size": found.size,
        "mtime_ns": found.mtime_ns,
    }
    addnet_offset: int | None = None
    if found.problem is not None:
        is_safetensors = found.file_name.lower().endswith(SAFETENSORS_EXT)
        fields.update(
            format="safetensors" if is_safetensors else "pickle", usable=False, problem=found.problem
        )
        return LiveEntry(**fields)
    if found.folder:
        fields.update(_inspect_folder(found))
        if hasher is not None and fields.get("usable", True) and _before(deadline):
            try:
                fields["sha256"] = folder_digest(found.path, hasher, _bounded(progress, deadline))
                fields["short_hash"] = fields["sha256"][:10]
            except ScanDeadline:
                log.warning("scan deadline reached while hashing %s; left for the next scan", found.path)
            except OSError as exc:
                fields.update(usable=False, problem=f"unreadable: {exc.strerror or exc}")
        return LiveEntry(**fields)
    if found.file_name.lower().endswith(SAFETENSORS_EXT):
        fields["format"] = "safetensors"
        try:
            header = read_header(found.path, file_size=found.size)
        except HeaderError as exc:
            fields.update(usable=False, problem=f"unusable safetensors file: {exc}")
        except OSError as exc:
            fields.update(usable=False, problem=f"unreadable: {exc.strerror or exc}")
        else:
            found_kind = detect(header.tensors, header.metadata)
            fields.update(
                detected_kind=found_kind.kind,
                architecture=found_kind.architecture,
                metadata=_kept_metadata(header.metadata),
            )
            if found_kind.kind == "checkpoint":
                fields.update(layout="ldm", usable_by=list(ENGINES))
            facts = lora_facts(header.tensors) if found_kind.kind == "lora" else None
            if facts is not None:
                fields.update(
                    layout=facts.layout,
                    usable_by=list(facts.usable_by),
                    details={
                        "rank": facts.rank,
                        "modules": facts.modules,
                        "components": list(facts.components),
                    },
                )
            if found_kind.kind is not None and found_kind.kind != found.kind:
                fields.update(
                    usable=False,
                    problem=f"looks like a {found_kind.kind} but sits in the {KIND_DIRS[found.kind]}/ folder",
                )
            if found.kind == "lora":
                addnet_offset = header.data_offset
    else:
        fields["format"] = "pickle"
        if not allow_pickle:
            fields.update(
                usable=False,
                problem="pickle format (.ckpt/.pt/.bin) can run code; refused unless WORKER_ALLOW_PICKLE",
            )
    if hasher is not None and _before(deadline):
        try:
            hashes = hasher(found.path, addnet_offset, _bounded(progress, deadline))
        except ScanDeadline:
            log.warning(
                "scan deadline reached while hashing %s; its hash is left for the next scan", found.path
            )
        except OSError as exc:
            fields.update(usable=False, problem=f"unreadable: {exc.strerror or exc}")
        else:
            fields.update(sha256=hashes.sha256, short_hash=hashes.short_hash, addnet_hash=hashes.addnet)
    return LiveEntry(**fields)


def _inspect_folder(found: FoundFile) -> dict[str, Any]:
    """A model folder's entry fields from its json files and headers (never the tensor data)."""
    fields: dict[str, Any] = {"detected_kind": found.kind}
    try:
        if found.kind == "checkpoint":
            pipeline = inspect_diffusers_folder(found.path)
            fields.update(
                format="diffusers",
                layout="diffusers",
                architecture=pipeline.architecture,
                # A1111 loads single files only; the embedded engine loads the folder itself
                usable_by=["embedded"],
                details={
                    "pipeline": pipeline.pipeline,
                    "precision": pipeline.precision,
                    "components": sorted(pipeline.weights),
                    "tokenizer": pipeline.has_tokenizer,
                },
            )
            return fields
        training = inspect_training_folder(found.path)
        header = read_header(training.lora_files[0])
        facts = lora_facts(header.tensors)
        fields.update(
            format="training",
            layout=facts.layout if facts else None,
            architecture=detect(header.tensors, header.metadata).architecture,
            usable_by=[],  # no engine lists a folder: convert it to a LoRA file
            details={
                "step": training.step,
                "rank": facts.rank if facts else None,
                "modules": facts.modules if facts else 0,
                "optimizer_state": training.optimizer,
                "base_model": training.base_model,
                "lora_files": [p.name for p in training.lora_files],
            },
        )
        if facts is None:
            fields.update(usable=False, problem=f"{training.lora_files[0].name} holds no LoRA tensors")
    except (LayoutError, HeaderError) as exc:
        fields.update(
            format="diffusers" if found.kind == "checkpoint" else "training", usable=False, problem=str(exc)
        )
    except OSError as exc:
        fields.update(format="other", usable=False, problem=f"unreadable: {exc.strerror or exc}")
    return fields


def folder_digest(folder: Path, hasher: Hasher, progress: Progress | None = None) -> str:
    """A folder's sha256: over ``<relative path>\0<file sha256>\n`` of its files in path order."""
    digest = hashlib.sha256()
    for file in folder_files(folder):
        rel = file.relative_to(folder).as_posix()
        digest.update(f"{rel}\0{hasher(file, None, progress).sha256}\n".encode())
    return digest.hexdigest()


def _before(deadline: float | None) -> bool:
    return deadline is None or time.monotonic() < deadline


def _bounded(progress: Progress | None, deadline: float | None) -> Progress | None:
    """The hasher's progress callback, raising ``ScanDeadline`` once the deadline has passed."""
    if deadline is None:
        return progress

    def check(n: int) -> None:
        if progress is not None:
            progress(n)
        if time.monotonic() > deadline:
            raise ScanDeadline

    return check


@dataclass
class ScanResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    hashed: int = 0
    total: int = 0


def plan_scan(
    models_dir: Path,
    registry: LiveRegistry,
    *,
    hash_files: bool,
    kinds: Iterable[ModelType] = MODEL_TYPES,
    folder_mtimes: dict[str, int] | None = None,
) -> tuple[list[FoundFile], list[FoundFile]]:
    """(all files, files needing inspection) — unchanged (size, mtime) files reuse their entry.

    A usable safetensors entry written by a schema-1 registry has no ``layout`` yet: it is inspected
    again (its header only; ``needs_hash`` tells the caller its cached hashes still hold).
    """
    found = list(iter_model_files(models_dir, kinds, folder_mtimes))
    todo = []
    for f in found:
        old = registry.models.get(entry_key(f.kind, f.file_name))
        changed = old is None or old.size != f.size or old.mtime_ns != f.mtime_ns
        changed = changed or (old is not None and old.problem != f.problem and f.problem is not None)
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
        if key in present or registry.models[key].kind not in scanned:
            continue
        entry = registry.models[key]
        # a file another worker added after our listing is not in ``found``: keep it while it exists
        if not os.path.lexists(models_dir / KIND_DIRS[entry.kind] / entry.file_name):
            del registry.models[key]
            result.removed.append(key)
    for entry in registry.models.values():
        if entry.registry_id is None:
            entry.registry_id = match_catalogue(entry)
    if scanned >= set(MODEL_TYPES):
        registry.scanned_at = now
    return result
