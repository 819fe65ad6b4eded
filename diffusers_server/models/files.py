"""A1111's model folders: listing, names/titles/aliases and hashes, exactly as A1111 v1.10 derives them.

Full-file sha256 is computed once per file and cached by (size, mtime) in a json file, so a restart or a
refresh never re-reads a multi-GB checkpoint that did not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from worker.registry.file_policy import real_roots, unreadable_reason
from worker.registry.hashing import folder_digest, hash_file
from worker.registry.layouts import component_weights, folder_stat, is_diffusers_folder
from worker.registry.safetensors_header import HeaderError, read_header

log = logging.getLogger(__name__)

CHECKPOINT_EXTS = (".safetensors", ".ckpt")
LORA_EXTS = (".safetensors", ".pt", ".ckpt")
EMBEDDING_EXTS = (".safetensors", ".pt", ".bin")
VAE_EXTS = (".safetensors", ".pt", ".ckpt")


class HashCache:
    """sha256 of whole files (and kohya "addnet" hashes), keyed by path, validated by size + mtime."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            try:
                self._data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("ignoring unreadable hash cache %s", path)

    def _get(self, file: Path, kind: str, compute: Any) -> str:
        stat = file.stat()
        key = f"{kind}:{file.resolve()}"
        with self._lock:
            entry = self._data.get(key)
            if entry and entry["size"] == stat.st_size and entry["mtime"] == stat.st_mtime:
                return str(entry["sha256"])
        digest = str(compute(file))
        with self._lock:
            self._data[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest}
            self._save()
        return digest

    def sha256(self, file: Path) -> str:
        return self._get(file, "sha256", _sha256_file)

    def addnet(self, file: Path) -> str:
        return self._get(file, "addnet", _addnet_hash)

    def folder(self, folder: Path) -> str:
        """A diffusers folder's digest, defined as the worker's registry defines it (so both agree)."""
        size, mtime_ns = folder_stat(folder)
        key = f"folder:{folder.resolve()}"
        with self._lock:
            entry = self._data.get(key)
            if entry and entry["size"] == size and entry["mtime"] == mtime_ns:
                return str(entry["sha256"])
        digest = folder_digest(folder, hash_file)
        with self._lock:
            self._data[key] = {"size": size, "mtime": mtime_ns, "sha256": digest}
            self._save()
        return digest

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._data), encoding="utf-8")
        tmp.replace(self.path)


def _sha256_file(file: Path) -> str:
    return hash_file(file).sha256


def _addnet_hash(file: Path) -> str:
    """kohya's "addnet" hash: sha256 of a safetensors file's tensor data (after the header)."""
    with file.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
    addnet = hash_file(file, addnet_offset=8 + header_len).addnet
    assert addnet is not None  # an offset was given
    return addnet


def old_model_hash(file: Path) -> str:
    """A1111's legacy 8-character "AutoV1" hash: sha256 of the 64 KiB at offset 1 MiB."""
    with file.open("rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


def scan(
    folder: Path,
    exts: tuple[str, ...],
    *,
    models_dir: Path | None = None,
    unusable: dict[str, str] | None = None,
) -> list[Path]:
    """Usable model files below ``folder`` (recursive, sorted like A1111's listing; hidden entries skipped).

    The registry's file policy applies (``worker.registry.file_policy``): only regular files whose real path
    stays inside ``folder`` or ``models_dir`` are listed, and a ``.safetensors`` file must have a readable,
    complete header. Every other file goes into ``unusable`` (path -> reason) and is never opened again, so
    one HTML error page saved as ``*.safetensors`` cannot break a refresh or the start-up. Files inside a
    diffusers pipeline folder are parts of that model, not models (A1111 would list them).
    """
    if not folder.is_dir():
        return []
    roots = real_roots(folder, *([models_dir] if models_dir is not None else []))
    pipelines = scan_pipelines(folder)
    found = []
    for p in folder.rglob("*"):
        relative = p.relative_to(folder)
        # hidden names below the folder are skipped; dots above it (~/.cache/models) do not matter
        if p.suffix.lower() not in exts or any(part.startswith(".") for part in relative.parts):
            continue
        if p.is_dir() and not p.is_symlink():
            continue
        if any(pipe in p.parents for pipe in pipelines):
            continue
        reason = unreadable_reason(p, roots)
        if reason is None and p.suffix.lower() == ".safetensors":
            reason = _header_problem(p)
        if reason is not None:
            log.warning("skipping unusable model file %s: %s", p, reason)
            if unusable is not None:
                unusable[str(p)] = reason
            continue
        found.append(p)
    return sorted(found, key=lambda p: str(p.relative_to(folder)).lower())


def scan_pipelines(folder: Path) -> list[Path]:
    """diffusers pipeline folders (``model_index.json``) below ``folder``; hidden ones skipped."""
    if not folder.is_dir():
        return []
    found = [
        p.parent
        for p in folder.rglob("model_index.json")
        if p.parent != folder
        and not any(part.startswith(".") for part in p.parent.relative_to(folder).parts)
        and is_diffusers_folder(p.parent)
    ]
    return sorted(found, key=lambda p: str(p.relative_to(folder)).lower())


def _header_problem(file: Path) -> str | None:
    try:
        read_header(file)
    except HeaderError as exc:
        return f"not a usable safetensors file: {exc}"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return None


_TEXT_ENCODER_LAYER = re.compile(
    r"^(?:cond_stage_model\.transformer\.|conditioner\.embedders\.0\.transformer\.)"
    r"(?:text_model\.)?encoder\.layers\.(\d+)\."
)


def clip_layers(file: Path) -> int | None:
    """How many CLIP(-L) transformer layers a single-file checkpoint has, from its header; None if unknown.

    ``CLIP_stop_at_last_layers`` can skip at most that many (A1111's 12 for SD1.x).
    """
    try:
        header = read_header(file)
    except (HeaderError, OSError):
        return None
    layers = {int(m.group(1)) for name in header.tensors if (m := _TEXT_ENCODER_LAYER.match(name))}
    return max(layers) + 1 if layers else None


def read_metadata(file: Path) -> dict[str, str]:
    if file.suffix.lower() != ".safetensors":
        return {}
    try:
        with safe_open(str(file), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:  # changed since the scan: listed without metadata
        log.warning("cannot read the metadata of %s: %s", file, exc)
        return {}


@dataclass(frozen=True)
class CheckpointInfo:
    """A1111's ``CheckpointInfo`` (modules/sd_models.py) for one file."""

    filename: Path
    name: str
    sha256: str
    hash: str

    @classmethod
    def from_file(cls, file: Path, root: Path, cache: HashCache) -> CheckpointInfo:
        name = str(file.relative_to(root)).replace(os.sep, "/")
        return cls(filename=file, name=name, sha256=cache.sha256(file), hash=old_model_hash(file))

    @classmethod
    def from_folder(cls, folder: Path, root: Path, cache: HashCache) -> CheckpointInfo:
        """A diffusers pipeline folder: named by its path, hashed as the registry hashes folders."""
        name = str(folder.relative_to(root)).replace(os.sep, "/")
        unet = component_weights(folder / "unet")[0]
        return cls(filename=folder, name=name, sha256=cache.folder(folder), hash=old_model_hash(unet))

    @property
    def name_for_extra(self) -> str:
        return self.filename.name if self.filename.is_dir() else self.filename.stem

    @property
    def model_name(self) -> str:
        stem = self.name if self.filename.is_dir() else self.name.rsplit(".", 1)[0]
        return stem.replace("/", "_").replace("\\", "_")

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    @property
    def aliases(self) -> set[str]:
        return {
            self.hash,
            self.model_name,
            self.title,
            self.name,
            self.name_for_extra,
            f"{self.name} [{self.hash}]",
            self.shorthash,
            self.sha256,
            f"{self.name_for_extra} [{self.shorthash}]",
        }

    def listing(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": str(self.filename),
            "config": None,
        }


@dataclass(frozen=True)
class LoraInfo:
    """A LoRA file as A1111's built-in Lora extension indexes it."""

    filename: Path
    name: str
    alias: str
    metadata: dict[str, str]

    @classmethod
    def from_file(cls, file: Path) -> LoraInfo:
        metadata = read_metadata(file)
        return cls(file, file.stem, metadata.get("ss_output_name") or file.stem, metadata)

    def listing(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "path": str(self.filename), "metadata": self.metadata}
