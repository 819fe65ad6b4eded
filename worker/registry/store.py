"""The live registry file: locked read-modify-write, atomic replace, corrupt files kept aside.

Readers never lock: the file is only ever replaced whole (``atomic_files``), so a reader sees the old or
the new version, never a mix. A reader re-parses the file only when its identity (inode, size, mtime,
ctime) changed: on a warm volume a read is one ``stat``. Writers serialise on ``<registry>.lock``
(``locks.held``: ``flock``, released by the kernel when a holder dies, so a killed worker never wedges
the rest).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import RegistryError
from worker.registry.atomic_files import atomic_write_bytes, fsync_dir
from worker.registry.locks import held
from worker.registry.models import REGISTRY_SCHEMA_VERSION, LiveRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: temp files older than this next to the registry are leftovers of killed writers
STALE_TMP_S = 3600.0
#: what the live registry was called in the models folder before it was told apart from the catalogue
LEGACY_REGISTRY_FILE = "cache_registry.json"


class RegistryLockTimeout(RegistryError):
    """Another worker held the registry lock past the deadline (a hung writer on the volume)."""


def _refuse_newer(path: Path, data: bytes) -> None:
    """A file from a newer worker is not corrupt: refuse it loudly rather than moving it aside."""
    try:
        version = json.loads(data).get("schema_version")
    except (ValueError, AttributeError):
        return
    if isinstance(version, int) and version > REGISTRY_SCHEMA_VERSION:
        raise RegistryError(
            f"registry {path} has schema_version {version}; this worker reads up to {REGISTRY_SCHEMA_VERSION}"
        )


class RegistryStore:
    """Owns one registry file and its lock.

    Args:
        path: the registry JSON (``settings.effective_registry_path``).
        lock_timeout_s: how long a writer waits for the lock before failing loudly.
        clock: timestamps of corrupt-file backups, lock waits, the age of stale temp files.
        legacy_path: where an older worker kept this registry; adopted (renamed to ``path``) when ``path``
            does not exist yet, so a volume's registry is never lost to the rename.
    """

    def __init__(
        self,
        path: Path,
        *,
        lock_timeout_s: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
        legacy_path: Path | None = None,
    ):
        self.path = path
        self.legacy_path = legacy_path
        self.lock_path = path.with_name(path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s
        self._clock = clock
        #: set when the last load found a corrupt file and moved it aside (the caller rescans)
        self.recovered_from: Path | None = None
        self._cached: tuple[tuple[int, ...], LiveRegistry] | None = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._holding(self.lock_path):
            yield

    @contextmanager
    def _holding(self, lock_path: Path) -> Iterator[None]:
        def timed_out() -> RegistryLockTimeout:
            return RegistryLockTimeout(
                f"registry lock {lock_path} still held after {self.lock_timeout_s:.0f}s"
            )

        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    held(lock_path, wait_s=self.lock_timeout_s, clock=self._clock, timed_out=timed_out)
                )
            except OSError as exc:  # a read-only volume cannot even hold the lock file
                raise self._unwritable(exc) from None
            yield

    def read(self) -> LiveRegistry:
        """Current contents without locking (safe: writers replace the file atomically).

        The result is shared between readers until the file changes: treat it as read-only
        (``update`` is the way to change the registry).
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._legacy_waiting():
                with self.locked():
                    self._adopt_legacy()
                return self.read()
            return LiveRegistry()
        except OSError as exc:
            raise self._unreadable(exc) from None
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._cached
        if cached is not None and cached[0] == identity:
            return cached[1]
        registry = self._load(move_corrupt=False)
        self._cached = (identity, registry)
        return registry

    def update(self, change: Callable[[LiveRegistry], T]) -> T:
        """Run ``change`` on the freshest registry under the lock and write the result atomically.

        Raises:
            RegistryError: the file cannot be written (read-only volume, no space) or is from a newer worker.
            RegistryLockTimeout: another writer held the lock past ``lock_timeout_s``.
        """
        with self.locked():
            if self._legacy_waiting():
                self._adopt_legacy()
            registry = self._load(move_corrupt=True)
            result = change(registry)
            try:
                atomic_write_bytes(self.path, registry.model_dump_json(indent=1).encode())
            except OSError as exc:
                raise self._unwritable(exc) from None
            self._remove_stale_tmp()
            return result

    def _legacy_waiting(self) -> bool:
        return self.legacy_path is not None and self.legacy_path.exists() and not self.path.exists()

    def _adopt_legacy(self) -> None:
        """Rename the old-named registry to ``path`` (once: under our lock and the one older workers take)."""
        assert self.legacy_path is not None
        with self._holding(self.legacy_path.with_name(self.legacy_path.name + ".lock")):
            if not self._legacy_waiting():
                return  # another worker adopted it meanwhile
            try:
                os.replace(self.legacy_path, self.path)
            except OSError as exc:
                raise self._unwritable(exc) from None
            fsync_dir(self.path.parent)
        log.info("registry %s renamed to %s (its new name)", self.legacy_path.name, self.path.name)

    def _unreadable(self, exc: OSError) -> RegistryError:
        return RegistryError(f"cannot read registry {self.path}: {exc.strerror or exc}")

    def _unwritable(self, exc: OSError) -> RegistryError:
        return RegistryError(f"cannot write registry {self.path}: {exc.strerror or exc}")

    def _load(self, *, move_corrupt: bool) -> LiveRegistry:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return LiveRegistry()
        except OSError as exc:
            raise self._unreadable(exc) from None
        _refuse_newer(self.path, data)
        try:
            return LiveRegistry.model_validate_json(data)
        except ValidationError as exc:
            if not move_corrupt:
                log.warning(
                    "registry %s is unreadable (%d errors); treating as empty", self.path, exc.error_count()
                )
                return LiveRegistry()
            self._move_aside(exc)
            return LiveRegistry()

    def _move_aside(self, exc: ValidationError) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock.time()))
        # unique even for two corruptions in the same second by the same process
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(self.path, aside)
        self.recovered_from = aside
        log.warning(
            "registry %s was corrupt (%s); moved it to %s and rebuilding from a scan",
            self.path,
            exc.errors()[0]["msg"] if exc.errors() else "invalid",
            aside.name,
        )

    def _remove_stale_tmp(self) -> None:
        now = self._clock.time()
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
