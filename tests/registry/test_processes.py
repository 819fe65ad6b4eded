"""Real processes: concurrent provisioning on one volume, and a writer killed at known points of its write.

Nothing here waits a fixed time hoping for an interleaving: the parent holds the lock the children need
until each has reached it, and a writer is stopped inside its write before it is killed.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from filelock import FileLock

from tests.registry.conftest import catalogue_doc
from tests.registry.fixtures import model_bytes
from tests.registry.workers import fill, provision_many, write_and_stop_at
from tests.support.clock import FakeClock
from worker.registry.models import LiveRegistry
from worker.registry.store import STALE_TMP_S, RegistryStore

SPAWN = multiprocessing.get_context("spawn")


def _wait_all(events: list, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    for event in events:
        assert event.wait(max(0.0, deadline - time.monotonic())), "a child process never reached the lock"


def _stop(procs: list) -> None:
    for proc in procs:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_eight_processes_download_each_file_once(models_dir, model_server):
    bodies = {i: model_bytes("lora-sdxl", seed=i) for i in range(3)}
    entries = []
    for i, body in bodies.items():
        model_server.add(f"/f/m{i}.safetensors", body)
        entries.append(
            {
                "id": f"m{i}",
                "kind": "lora",
                "file_name": f"m{i}.safetensors",
                "sha256": hashlib.sha256(body).hexdigest(),
                "source": {"type": "url", "url": f"{model_server.url}/f/m{i}.safetensors"},
            }
        )
    catalogue = catalogue_doc(*entries)
    jobs = [[f"m{i % 3}", f"m{(i + 1) % 3}"] for i in range(8)]
    (models_dir / ".locks").mkdir()
    held = [FileLock(str(models_dir / ".locks" / f"m{i}.lock")) for i in range(3)]
    for lock in held:
        lock.acquire()
    arrived = [SPAWN.Event() for _ in jobs]
    queue = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=provision_many, args=(str(models_dir), model_server.port, catalogue, refs, event, queue)
        )
        for refs, event in zip(jobs, arrived, strict=True)
    ]
    for proc in procs:
        proc.start()
    try:
        _wait_all(arrived)  # all eight wait at a model lock: the race starts when it is released
    finally:
        for lock in held:
            lock.release()
    results = [queue.get(timeout=120) for _ in procs]
    _stop(procs)
    want = {f"m{i}": hashlib.sha256(b).hexdigest() for i, b in bodies.items()}
    for refs, shas in results:
        assert shas == [want[r] for r in refs]
    for i in range(3):
        assert len(model_server.gets(f"/f/m{i}.safetensors")) == 1
    registry = LiveRegistry.model_validate_json((models_dir / "registry.json").read_bytes())
    assert sorted(registry.models) == [f"lora/m{i}.safetensors" for i in range(3)]
    assert all(
        e.usable and e.downloaded and e.sha256 == want[e.registry_id] for e in registry.models.values()
    )
    assert sum(e.use_count for e in registry.models.values()) == 16
    assert not [p for p in (models_dir / "loras").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("point", ["half-written", "before-fsync", "before-rename"])
def test_writer_killed_mid_write_leaves_registry_intact(tmp_path: Path, point: str) -> None:
    path = tmp_path / "registry.json"
    RegistryStore(path).update(lambda registry: fill(registry, 200, size=1))
    before = path.read_bytes()
    inside = SPAWN.Event()
    proc = SPAWN.Process(target=write_and_stop_at, args=(str(path), point, inside))
    proc.start()
    try:
        assert inside.wait(90), "the writer never reached its write"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _stop([proc])
    assert proc.exitcode == -signal.SIGKILL
    assert path.read_bytes() == before  # readers still see the whole old file
    assert len(LiveRegistry.model_validate_json(path.read_bytes()).models) == 200
    leftovers = list(tmp_path.glob(".registry.json.*.tmp"))
    assert len(leftovers) == 1  # the dead writer's temp file, never the registry itself

    # the kernel released the dead writer's lock: the next writer takes it without waiting at all, and,
    # an hour later, removes the leftover
    later = FakeClock(start=0.0, wall=time.time() + STALE_TMP_S + 60)
    later.sleep = lambda seconds: pytest.fail("waited for the lock of a dead writer")  # type: ignore[method-assign]
    store = RegistryStore(path, lock_timeout_s=5, clock=later)
    store.update(lambda registry: registry.models.clear())
    assert store.read().models == {}
    assert not list(tmp_path.glob(".registry.json.*.tmp"))
    assert not list(tmp_path.glob("*.corrupt-*"))
