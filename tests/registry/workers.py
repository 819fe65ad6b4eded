"""Entry points for spawned test processes (importable by multiprocessing's spawn start method)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.registry.conftest import registry_kwargs
from worker.registry.models import LiveEntry, LiveRegistry
from worker.registry.registry import ModelRegistry
from worker.registry.store import RegistryStore

#: how long a process stopped on purpose waits to be killed before it gives up (bounds a broken test)
HANG_S = 120


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


def _announce_lock_arrival(module: ModuleType, arrived: Any) -> None:
    """Make ``module``'s lock helper set ``arrived`` as this process reaches a lock, then take it as usual."""
    real = module.held

    @contextmanager
    def held(path: Path, **kwargs: Any) -> Iterator[None]:
        arrived.set()
        with real(path, **kwargs):
            yield

    module.held = held


def provision_many(
    models_dir: str, port: int, catalogue: dict[str, Any], refs: list[str], arrived: Any, queue: Any
) -> None:
    """Provision ``refs`` in order, recording each use; report (refs, sha256s)."""
    import worker.registry.model_fetch

    _announce_lock_arrival(worker.registry.model_fetch, arrived)
    registry = ModelRegistry(**registry_kwargs(Path(models_dir), _Port(port), catalogue))  # type: ignore[arg-type]
    shas = []
    for ref in refs:
        got = registry.provision("lora", ref)
        assert got is not None
        registry.record_use("lora", got.facts.file_name)
        shas.append(got.facts.sha256 or "")
    registry.flush_uses()
    queue.put((refs, shas))


def fill(registry: LiveRegistry, count: int, size: int) -> None:
    for j in range(count):
        registry.models[f"lora/f{j}.safetensors"] = LiveEntry(
            kind="lora", file_name=f"f{j}.safetensors", size=size, mtime_ns=size, format="safetensors"
        )


def write_and_stop_at(registry_path: str, point: str, inside: Any) -> None:
    """Update the registry but stop inside its atomic write at ``point``, set ``inside`` and wait to be killed.

    ``half-written``: half the new file's bytes are in the temp file; ``before-fsync``: all of them, not yet
    synced; ``before-rename``: synced, not yet renamed over the registry.
    """

    def stop(*_args: Any) -> Any:
        inside.set()
        time.sleep(HANG_S)
        os._exit(3)

    if point == "half-written":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, fh: Any) -> None:
                self.fh = fh

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

            def write(self, data: bytes) -> None:
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                stop()

        os.fdopen = lambda fd, mode: HalfWriter(real_fdopen(fd, mode))  # type: ignore[assignment]
    elif point == "before-fsync":
        os.fsync = stop
    else:
        os.replace = stop
    RegistryStore(Path(registry_path)).update(lambda registry: fill(registry, 400, size=2))


def convert_in_process(models_dir: str, reference: str, arrived: Any, queue: Any) -> None:
    """Convert ``reference`` for A1111 through the registry; report (status, output key, notes)."""
    import worker.registry.conversion_runner

    _announce_lock_arrival(worker.registry.conversion_runner, arrived)
    registry = ModelRegistry(**registry_kwargs(Path(models_dir), None, None))
    found = registry.resolve("lora", reference)
    assert found.live is not None
    result = registry.convert(found.live, "a1111")
    queue.put((result.status, result.output.key if result.output else None, result.notes))


def pull_job(models_dir: str, port: int, url: str, arrived: Any, queue: Any) -> None:
    """Run one registry ``pull`` job for ``url``; report its output."""
    import worker.registry.model_fetch
    from worker.registry.jobs import RegistryJobs

    _announce_lock_arrival(worker.registry.model_fetch, arrived)
    registry = ModelRegistry(**registry_kwargs(Path(models_dir), _Port(port), None))  # type: ignore[arg-type]
    jobs = RegistryJobs(registry, engine="a1111")
    from worker.model_job_types import PullAction

    action = PullAction(action="pull", ref=url, kind="lora")
    queue.put(jobs.run(action, report=lambda update: None, cancelled=lambda: False).output)


def load_while_pruned(
    models_dir: str, reference: str, expected: dict[str, str], first: Any, queue: Any
) -> None:
    """Serve "jobs" naming ``reference`` (a model folder) until it is gone: resolve it through the registry,
    then read every file as an engine loading it would. Report each load: ``complete`` (every file, every
    byte as expected), ``gone`` (not found, or vanished while opening) or ``partial`` (a folder with some
    files missing or changed: what must never be loaded)."""
    import hashlib

    registry = ModelRegistry(**registry_kwargs(Path(models_dir), None, None))
    outcomes: list[str] = []
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        facts = registry.describe("checkpoint", reference)
        if facts is None:
            outcomes.append("gone")
            break
        folder = Path(models_dir) / "checkpoints" / facts.file_name
        try:
            seen = {}
            for dirpath, _dirs, files in os.walk(folder, onerror=_raise):
                for name in files:
                    path = Path(dirpath) / name
                    seen[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            outcomes.append("gone")
            continue
        outcomes.append("complete" if seen == expected else "partial" if seen else "gone")
        first.set()
    queue.put(outcomes)


def _raise(exc: OSError) -> None:
    raise exc


def remove_job(models_dir: str, reference: str, first: Any, queue: Any) -> None:
    """Wait until the other worker has loaded the model once, then run a registry ``remove`` job on it."""
    from worker.model_job_types import RemoveAction
    from worker.registry.jobs import RegistryJobs

    first.wait(HANG_S)
    registry = ModelRegistry(**registry_kwargs(Path(models_dir), None, None))
    action = RemoveAction(action="remove", ref=reference, kind="checkpoint")
    out = RegistryJobs(registry, engine="a1111").run(
        action, report=lambda update: None, cancelled=lambda: False
    )
    queue.put(out.output)
