"""The operator's upkeep of a volume: verify every hash, clear what killed processes left, remove a model."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.clock import Clock
from worker.registry.eviction import Evictor
from worker.registry.hashing import ByteProgress, Hasher
from worker.registry.inventory import Inventory
from worker.registry.models import LiveEntry
from worker.registry.names import contained_path
from worker.registry.volume import KIND_DIRS, model_path

log = logging.getLogger(__name__)

#: leftovers of killed downloads and conversions older than this are removed by ``gc``
STALE_PART_S = 6 * 3600.0


@dataclass(frozen=True)
class VerifyProblem:
    key: str
    problem: str


class Maintenance:
    """``verify``, ``gc`` and ``remove`` for one volume (the CLI's commands of the same names)."""

    def __init__(
        self, *, models_dir: Path, inventory: Inventory, evictor: Evictor, hasher: Hasher, clock: Clock
    ) -> None:
        self.models_dir = models_dir
        self.inventory = inventory
        self.evictor = evictor
        self.hasher = hasher
        self.clock = clock

    def verify(self, progress: ByteProgress | None = None) -> list[VerifyProblem]:
        """Re-hash every file and compare with the cached and catalogue hashes (a full read: slow)."""
        by_id = {c.id: c for c in self.inventory.catalogue.models}
        problems = []
        for entry in self.inventory.entries():
            if not entry.usable:
                problems.append(VerifyProblem(entry.key, entry.problem or "unusable"))
                continue
            try:
                sha256 = self.hasher(model_path(self.models_dir, entry), None, progress).sha256
            except OSError as exc:
                problems.append(VerifyProblem(entry.key, f"unreadable: {exc.strerror or exc}"))
                continue
            if entry.sha256 and sha256 != entry.sha256:
                problems.append(
                    VerifyProblem(entry.key, f"sha256 changed since it was recorded ({sha256[:12]}…)")
                )
            declared = by_id.get(entry.registry_id or "")
            if declared is not None and declared.sha256 and declared.sha256 != sha256:
                problems.append(
                    VerifyProblem(entry.key, f"sha256 differs from catalogue entry {declared.id}")
                )
        return problems

    def gc(self) -> list[str]:
        """Remove leftovers of killed downloads and conversions, forget vanished files, enforce the quota."""
        actions = [
            f"removed stale partial download or conversion {name}" for name in self._remove_stale_parts()
        ]
        actions += [f"forgot {key} (file gone)" for key in self.inventory.scan().removed]
        actions += [f"evicted {key}" for key in self.evictor.make_room(0, set())]
        return actions

    def _remove_stale_parts(self) -> list[str]:
        now = self.clock.time()
        removed = []
        for kind_dir in KIND_DIRS.values():
            for part in _glob(self.models_dir / kind_dir, ".*.part"):
                with contextlib.suppress(OSError):
                    if now - part.stat().st_mtime > STALE_PART_S:
                        _remove_path(part)
                        removed.append(part.name)
        return removed

    def remove(self, entry: LiveEntry) -> None:
        """Delete a model file or folder from the volume and forget it (the CLI's ``--remove-source``).

        A model folder is first renamed to a hidden name in one step, so another worker sees the whole
        model or none of it, never a folder with half its files deleted (a crash leaves the hidden name
        for ``gc``); a file's unlink is atomic already.
        """
        path = contained_path(self.models_dir / KIND_DIRS[entry.kind], entry.file_name)
        if path.is_dir() and not path.is_symlink():
            hidden = path.with_name(f".{path.name}.{os.getpid()}.removed.part")
            os.replace(path, hidden)
            path = hidden
        _remove_path(path)
        self.inventory.forget({entry.key})
        log.info("removed %s from the volume", entry.key)


def _remove_path(path: Path) -> None:
    """A file, or a whole folder (a model folder, a killed conversion to a diffusers folder)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _glob(folder: Path, pattern: str) -> Iterator[Path]:
    if folder.is_dir():
        for dirpath, _dirs, _files in os.walk(folder):
            yield from Path(dirpath).glob(pattern)
