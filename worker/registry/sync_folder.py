"""A model folder of a Hugging Face repository (a diffusers pipeline, a PEFT LoRA), whole or not at all.

A model folder is one model: its weights are useless without ``model_index.json``, the components'
``config.json`` and the tokenizer files, and a worker that saw half of it would load a broken pipeline. So
a sync finds these folders in the repository listing (the layouts ``layouts.py`` recognises on the volume),
downloads each folder's files into a hidden ``.<name>.sync`` folder beside the final one (hidden names are
never scanned), verifies every file, and renames the folder into place; any failure or cancellation removes
the hidden folder. Besides weights only small config and tokenizer files come, by a strict allowlist of
names and a size cap. Hugging Face publishes a sha256 for LFS files only: a small file stored in git is
checked against its size and its git blob sha1 (the listing's ``oid``), and refused when it has neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from worker.errors import DownloadFailed, ModelIncompatible
from worker.model_types import ModelType
from worker.registry.atomic_files import fsync_dir
from worker.registry.download import DownloadRequest
from worker.registry.hf_repo import RepoFile
from worker.registry.job_paths import VolumeTarget, kind_of_folder
from worker.registry.layouts import MODEL_INDEX
from worker.registry.locks import held
from worker.registry.names import safe_relative_name
from worker.registry.registry import ModelRegistry
from worker.registry.volume import KIND_DIRS, LOCK_DIR, SAFETENSORS_EXT

#: config and tokenizer files a model folder may bring besides its weights (nothing executable, no pickle)
CONFIG_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.(json|txt)$")
#: the largest config or tokenizer file synced (CLIP's tokenizer.json is about 2 MB)
MAX_CONFIG_BYTES = 16 * 1024 * 1024
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: the kind a model folder goes to when neither the job nor the repository's folders say
LAYOUT_KIND: dict[str, ModelType] = {"diffusers": "checkpoint", "peft": "lora"}


@dataclass(frozen=True)
class ModelFolder:
    """One model folder of the repository: its path relative to the synced folder ('' = that folder)."""

    root: str
    layout: str  # diffusers | peft


@dataclass(frozen=True)
class FolderPlan:
    kind: ModelType
    name: str  # the folder's name in its kind folder
    files: tuple[tuple[str, RepoFile], ...]  # (path inside the model folder, repository file)

    @property
    def path(self) -> str:
        return f"{KIND_DIRS[self.kind]}/{self.name}"


def model_folders(rels: list[str]) -> list[ModelFolder]:
    """The model folders among repository paths (relative to the synced folder), outermost first."""
    names = set(rels)
    found: list[ModelFolder] = []
    for rel in sorted(rels):
        root, _, base = rel.rpartition("/")
        prefix = f"{root}/" if root else ""
        if base == MODEL_INDEX:
            found.append(ModelFolder(root, "diffusers"))
        elif base == PEFT_FILES[0] and f"{prefix}{PEFT_FILES[1]}" in names:
            found.append(ModelFolder(root, "peft"))
    outer: list[ModelFolder] = []
    for folder in sorted(found, key=lambda f: f.root.count("/") if f.root else -1):
        if not any(folder_of(folder.root, o) is not None for o in outer):
            outer.append(folder)
    return outer


def folder_of(rel: str, folder: ModelFolder) -> str | None:
    """``rel``'s path inside ``folder``, or None when it lies outside."""
    if not folder.root:
        return rel
    return rel[len(folder.root) + 1 :] if rel.startswith(f"{folder.root}/") else None


def config_refusal(inner: str, repo_file: RepoFile) -> str | None:
    """Why a non-weight file of a model folder is not synced, or None when it is allowed."""
    base = inner.rsplit("/", 1)[-1]
    if not CONFIG_FILE.match(base):
        return "not a weight, config or tokenizer file of the model folder (.safetensors, .json, .txt)"
    if repo_file.size is None or repo_file.size > MAX_CONFIG_BYTES:
        return f"config file larger than {MAX_CONFIG_BYTES} bytes (or of unknown size)"
    if repo_file.sha256 is None and repo_file.git_oid is None:
        return "the repository lists no sha256 or git oid to verify it with"
    return None


def place_folder(target: VolumeTarget, folder: ModelFolder, default_name: str) -> tuple[ModelType, str]:
    """Where a model folder goes: the job's kind folder, else the repository's top folder, else by layout."""
    rel = folder.root or default_name
    if target.kind is not None:
        kind, name = target.kind, f"{target.sub}/{rel}" if target.sub else rel
    else:
        top, _, rest = rel.partition("/")
        found = kind_of_folder(top) if rest else None
        kind, name = (found, rest) if found else (LAYOUT_KIND[folder.layout], rel)
    return kind, safe_relative_name(name, what="synced folder name")


def git_blob_sha1(path: Path) -> str:
    """The sha1 git names a file's content by (``blob <size>\\0`` + content)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FolderSync:
    """Downloads one planned model folder under a hidden name, verified, then renames it into place."""

    def __init__(self, registry: ModelRegistry, *, repo: str, revision: str) -> None:
        self.registry = registry
        self.repo = repo
        self.revision = revision

    def present(self, plan: FolderPlan) -> bool:
        """True when the folder is there with every planned file at its size; a different one is refused."""
        final = self.registry.models_dir / plan.path
        if not final.exists():
            return False
        same = final.is_dir() and all(
            (final / inner).is_file() and (final / inner).stat().st_size == f.size for inner, f in plan.files
        )
        if same:
            return True
        raise ModelIncompatible(
            f"{plan.path} is already on the volume and differs from the repository's folder; remove it first",
            details={"file_name": plan.name},
        )

    def sync(self, plan: FolderPlan, on_file: Callable[[str], Callable[[int, int | None], None]]) -> bool:
        """Bring the folder whole (True), or find it there already (False); never leaves part of it."""
        registry = self.registry
        key = f"sync-{plan.kind}-{plan.name}".replace("/", "_")
        lock = registry.models_dir / LOCK_DIR / f"{key}.lock"
        fetcher = registry.fetcher

        def timed_out() -> DownloadFailed:
            return DownloadFailed(
                f"another worker is still syncing {plan.path} after {fetcher.lock_wait_s:.0f}s"
            )

        with held(lock, wait_s=fetcher.lock_wait_s, clock=fetcher.clock, timed_out=timed_out):
            if self.present(plan):
                return False
            final = registry.models_dir / plan.path
            hidden = final.parent / f".{final.name}.sync"
            shutil.rmtree(hidden, ignore_errors=True)  # a killed worker's leftovers: we hold the lock
            try:
                fetcher.evictor.make_room(sum(f.size or 0 for _, f in plan.files), set())
                for inner, repo_file in plan.files:
                    self._download(hidden, inner, repo_file, on_file(f"{plan.path}/{inner}"))
                os.rename(hidden, final)
            finally:
                shutil.rmtree(hidden, ignore_errors=True)
            fsync_dir(final.parent)
            return True

    def _download(
        self, hidden: Path, inner: str, repo_file: RepoFile, on_bytes: Callable[[int, int | None], None]
    ) -> None:
        fetcher = self.registry.fetcher
        url = (
            f"{self.registry.hf_base}/{self.repo}/resolve/"
            f"{quote(self.revision, safe='')}/{quote(repo_file.path)}"
        )
        weights = inner.lower().endswith(SAFETENSORS_EXT)
        request = DownloadRequest(
            url=url,
            dest_dir=hidden,
            key=hashlib.sha256(inner.encode()).hexdigest()[:16],
            file_name=inner,
            expected_sha256=repo_file.sha256,
            expected_size=repo_file.size,
            allowed_suffixes=SAFETENSORS_EXT if weights else (".json", ".txt"),
            text_expected=not weights,
        )
        got = fetcher.downloader.fetch(request, progress=on_bytes)
        if repo_file.sha256 is None and repo_file.git_oid is not None:
            have = git_blob_sha1(got.path)
            if have != repo_file.git_oid:
                with contextlib.suppress(FileNotFoundError):
                    got.path.unlink()
                raise DownloadFailed(
                    f"{inner}: git blob sha1 mismatch (got {have[:12]}…, the repository lists "
                    f"{repo_file.git_oid[:12]}…); folder discarded",
                    details={"file": repo_file.path},
                )
