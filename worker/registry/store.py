"""The live registry file: locked read-modify-write, atomic replace, corrupt files kept aside.

Readers never lock: the file is only ever replaced whole (tmp + fsync + os.replace), so a reader
sees the old or the new version, never a mix. A reader re-parses the file only when its identity
(inode, size, mtime, ctime) changed: on a warm volume a read is one ``stat``. Writers serialise on
``<registry>.lock`` (filelock: ``flock``), which the kernel releases when a holder dies, so a killed
worker never wedges the rest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout
from pydantic import ValidationError

from worker.errors import RegistryError
from worker.registry.models import REGISTRY_SCHEMA_VERSION, LiveRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: temp files older than this next to the registry are leftovers of killed writers
STALE_TMP_S = 3600.0


class RegistryLockTimeout(RegistryError):
    """Another worker held the registry lock past the deadline (a hung writer on the volume)."""


def fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry), best effort on file systems that refuse it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


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
        clock: wall clock, injectable for tests.
    """

    def __init__(self, path: Path, *, lock_timeout_s: float = 60.0, clock: Callable[[], float] = time.time):
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s
        self._clock = clock
        #: set when the last load found a corrupt file and moved it aside (the caller rescans)
        self.recovered_from: Path | None = None
        self._cached: tuple[tuple[int, ...], LiveRegistry] | None = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=self.lock_timeout_s)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryLockTimeout(
                f"registry lock {self.lock_path} still held after {self.lock_timeout_s:.0f}s"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def read(self) -> LiveRegistry:
        """Current contents without locking (safe: writers replace the file atomically).

        The result is shared between readers until the file changes: treat it as read-only
        (``update`` is the way to change the registry).
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return LiveRegistry()
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._cached
        if cached is not None and cached[0] == identity:
            return cached[1]
        registry = self._load(move_corrupt=False)
        self._cached = (identity, registry)
        return registry

    def update(self, change: Callable[[LiveRegistry], T]) -> T:
        """Run ``change`` on the freshest registry under the lock and write the result atomically."""
        with self.locked():
            registry = self._load(move_corrupt=True)
            result = change(registry)
            self._write(registry)
            self._remove_stale_tmp()
            return result

    def _load(self, *, move_corrupt: bool) -> LiveRegistry:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return LiveRegistry()
        _refuse_newer(self.path, data)
        try:
            return LiveRegistry.model_validate_json(data)
        except ValidationError as exc:
            if not move_corrupt:
                log.warning(
                    "registry %s is unreadable (%d errors); treating as empty", self.path, exc.error_count()
                )
                return LiveRegistry()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
            # unique even for two corruptions in the same second by the same process
            aside = self.path.with_name(
                f"{self.path.name}.corrupt-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            )
            os.replace(self.path, aside)
            self.recovered_from = aside
            log.warning(
                "registry %s was corrupt (%s); moved it to %s and rebuilding from a scan",
                self.path,
                exc.errors()[0]["msg"] if exc.errors() else "invalid",
                aside.name,
            )
            return LiveRegistry()

    def _write(self, registry: LiveRegistry) -> None:
        atomic_write_bytes(self.path, registry.model_dump_json(indent=1).encode())

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
