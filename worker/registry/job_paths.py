"""Where a registry job may write: a path a job names (``dest``, the peer's ``download_path`` or
``sync_path``) is accepted only when it resolves (symlinks and ``..`` included) inside the models folder,
and the model folder it lands in gives the kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from worker.errors import InputInvalid, excerpt
from worker.model_types import ModelType
from worker.registry.volume import KIND_DIRS

#: the folder names of A1111's own ``models/`` (a repository laid out like it syncs into the right kinds)
A1111_FOLDERS: dict[str, ModelType] = {
    "stable-diffusion": "checkpoint",
    "lora": "lora",
    "vae": "vae",
    "embeddings": "embedding",
    "esrgan": "upscaler",  # any spandrel upscaler: A1111 lists upscalers/ as its ESRGAN folder
}


@dataclass(frozen=True)
class VolumeTarget:
    """A place in the models folder: ``kind`` None is the models folder itself; ``sub`` is relative to the
    kind's folder (empty: the folder itself)."""

    kind: ModelType | None
    sub: str


def volume_target(models_dir: Path, dest: str) -> VolumeTarget:
    """The place ``dest`` (absolute, or relative to the models folder) names; refused outside it."""
    given = Path(dest).expanduser()
    resolved = Path(os.path.realpath(given if given.is_absolute() else models_dir / given))
    if resolved == Path(os.path.realpath(models_dir)):
        return VolumeTarget(None, "")
    for kind, folder in KIND_DIRS.items():
        base = Path(os.path.realpath(models_dir / folder))
        if resolved == base:
            return VolumeTarget(kind, "")
        if base in resolved.parents:
            sub = resolved.relative_to(base).as_posix()
            if any(part.startswith(".") for part in sub.split("/")):
                break  # hidden names are the registry's own (temp files, locks)
            return VolumeTarget(kind, sub)
    folders = ", ".join(f"{models_dir}/{folder}/" for folder in KIND_DIRS.values())
    raise InputInvalid(
        f"path {excerpt(dest, 200)} is not inside a model folder of this worker (it resolves to "
        f"{excerpt(str(resolved), 200)}); use a path inside one of {folders}",
        details={"path": dest[:200], "models_dir": str(models_dir)},
    )


def kind_of_folder(name: str) -> ModelType | None:
    """The kind a repository's top folder stands for: ours (``loras``) or A1111's (``Lora``)."""
    for kind, folder in KIND_DIRS.items():
        if name == folder:
            return kind
    return A1111_FOLDERS.get(name.lower())
