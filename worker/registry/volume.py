"""The volume's layout: which folder holds each kind, which names are models, and where an entry lives.

Walking lists every model file and model folder below the kind folders without reading any of them;
only ``stat`` calls here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.errors import RegistryError
from worker.model_types import MODEL_TYPES, ModelType
from worker.registry.file_policy import real_roots, unreadable_reason
from worker.registry.layouts import folder_stat, is_diffusers_folder, is_training_folder
from worker.registry.models import LiveEntry

log = logging.getLogger(__name__)

#: kind -> folder under models_dir (A1111 is started with these as --ckpt-dir, --lora-dir, ...)
KIND_DIRS: dict[ModelType, str] = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "embedding": "embeddings",
    "vae": "vae",
    # the extensions' folders (start.sh passes --controlnet-dir and links ADetailer's models folder to them)
    "controlnet": "ControlNet",
    "adetailer": "adetailer",
    # A1111's --esrgan-models-path; its RealESRGAN/, SwinIR/ and DAT/ sub-folders are the other upscaler
    # families' paths (start.sh; worker/registry/upscalers.py)
    "upscaler": "upscalers",
}
SAFETENSORS_EXT = (".safetensors",)
PICKLE_EXT = (".ckpt", ".pt", ".pth", ".bin")
MODEL_EXT = SAFETENSORS_EXT + PICKLE_EXT
#: per-model download and conversion locks, below the models folder (hidden: never listed)
LOCK_DIR = ".locks"


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


def model_path(models_dir: Path, entry: LiveEntry) -> Path:
    """Where ``entry`` lives on the volume."""
    return models_dir / KIND_DIRS[entry.kind] / entry.file_name


def change_key(path: Path) -> tuple[int, int]:
    """(size, mtime_ns): a file's, or for a model folder the sum of its files' sizes and the newest mtime."""
    if path.is_dir():
        return folder_stat(path)
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def is_current(models_dir: Path, entry: LiveEntry) -> bool:
    """Whether ``entry`` still describes what is on disk (same size and mtime; it still exists)."""
    try:
        return change_key(model_path(models_dir, entry)) == (entry.size, entry.mtime_ns)
    except OSError:
        return False


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

    Raises:
        RegistryError: a kind folder cannot be listed (an unlistable sub-folder is logged and skipped).
    """
    for kind in kinds:
        root = models_dir / KIND_DIRS[kind]
        if root.is_dir():
            yield from _walk_kind(models_dir, kind, root, folder_mtimes)


def _walk_kind(
    models_dir: Path, kind: ModelType, root: Path, folder_mtimes: dict[str, int] | None
) -> Iterator[FoundFile]:
    roots = real_roots(models_dir, root)

    def unreadable(exc: OSError) -> None:
        if Path(exc.filename or "") == root:
            raise RegistryError(f"cannot list {root}: {exc.strerror or exc}")
        log.warning("skipping %s: %s", exc.filename, exc.strerror or exc)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if folder_mtimes is not None:
            folder_mtimes[dirpath] = _mtime_ns(dirpath)
        here = Path(dirpath)
        if here != root and _unit_folder(kind, here):
            dirnames[:] = []
            yield from _found_folder(kind, root, here)
            continue
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(MODEL_EXT):
                yield from _found_file(kind, root, roots, here / name)


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _found_folder(kind: ModelType, root: Path, folder: Path) -> Iterator[FoundFile]:
    try:
        size, mtime_ns = folder_stat(folder)
    except OSError:  # removed while we walked
        return
    yield FoundFile(kind, folder.relative_to(root).as_posix(), folder, size, mtime_ns, folder=True)


def _found_file(kind: ModelType, root: Path, roots: tuple[Path, ...], path: Path) -> Iterator[FoundFile]:
    problem = unreadable_reason(path, roots)
    try:
        st = os.stat(path) if problem is None else os.lstat(path)
    except OSError:  # removed while we walked
        return
    yield FoundFile(
        kind, path.relative_to(root).as_posix(), path, st.st_size, st.st_mtime_ns, problem=problem
    )
