"""Walk ``models_dir/{checkpoints,loras,embeddings,vae}`` and describe every model file.

Only headers are read to detect kind and architecture; hashing is the one full read, done once per
(size, mtime) and cached in the registry, so a warm scan is a ``stat`` per file. The slow part
(hashing) runs outside the registry lock; only the merge takes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.model_types import MODEL_KINDS, ModelKind
from worker.registry.detect import detect
from worker.registry.hashing import Hasher, Progress, hash_file
from worker.registry.models import LiveEntry, LiveRegistry, entry_key
from worker.registry.safetensors_header import HeaderError, read_header

log = logging.getLogger(__name__)

#: kind -> folder under models_dir (A1111 is started with these as --ckpt-dir, --lora-dir, ...)
KIND_DIRS: dict[ModelKind, str] = {
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
    kind: ModelKind
    file_name: str  # relative to the kind folder, POSIX separators
    path: Path
    size: int
    mtime_ns: int


def iter_model_files(models_dir: Path) -> Iterator[FoundFile]:
    """Every model file below the kind folders; hidden names (our temp and lock files) are skipped."""
    for kind in MODEL_KINDS:
        root = models_dir / KIND_DIRS[kind]
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(MODEL_EXT):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except OSError:
                    continue
                rel = path.relative_to(root).as_posix()
                yield FoundFile(kind, rel, path, st.st_size, st.st_mtime_ns)


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
) -> LiveEntry:
    """Describe one file: header-based detection, usability, and (when ``hasher``) its hashes."""
    fields: dict[str, Any] = {
        "kind": found.kind,
        "file_name": found.file_name,
        "size": found.size,
        "mtime_ns": found.mtime_ns,
    }
    addnet_offset: int | None = None
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
    if hasher is not None:
        try:
            hashes = hasher(found.path, addnet_offset, progress)
        except OSError as exc:
            fields.update(usable=False, problem=f"unreadable: {exc.strerror or exc}")
        else:
            fields.update(sha256=hashes.sha256, short_hash=hashes.short_hash, addnet_hash=hashes.addnet)
    return LiveEntry(**fields)


@dataclass
class ScanResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    hashed: int = 0
    total: int = 0


def plan_scan(
    models_dir: Path, registry: LiveRegistry, *, hash_files: bool
) -> tuple[list[FoundFile], list[FoundFile]]:
    """(all files, files needing inspection) — unchanged (size, mtime) files reuse their entry."""
    found = list(iter_model_files(models_dir))
    todo = []
    for f in found:
        old = registry.models.get(entry_key(f.kind, f.file_name))
        changed = old is None or old.size != f.size or old.mtime_ns != f.mtime_ns
        if changed or (hash_files and old is not None and old.sha256 is None):
            todo.append(f)
    return found, todo


def merge_scan(
    registry: LiveRegistry,
    models_dir: Path,
    found: list[FoundFile],
    fresh: dict[str, LiveEntry],
    *,
    now: float,
    match_catalogue: Callable[[LiveEntry], str | None],
) -> ScanResult:
    """Apply a scan to the (locked, freshest) registry, keeping usage history of known files."""
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
        if key in present:
            continue
        entry = registry.models[key]
        # a file another worker added after our listing is not in ``found``: keep it while it exists
        if not (models_dir / KIND_DIRS[entry.kind] / entry.file_name).is_file():
            del registry.models[key]
            result.removed.append(key)
    for entry in registry.models.values():
        if entry.registry_id is None:
            entry.registry_id = match_catalogue(entry)
    registry.scanned_at = now
    return result
