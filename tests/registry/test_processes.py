"""Real processes: concurrent provisioning on one volume, and a writer killed mid-write."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time

from tests.registry.conftest import catalogue_doc
from tests.registry.fixtures import model_bytes
from tests.registry.workers import provision_many, write_forever
from worker.registry.models import LiveRegistry
from worker.registry.store import RegistryStore


def test_eight_processes_download_each_file_once(models_dir, model_server, make_registry):
    bodies = {i: model_bytes("lora-sdxl", seed=i) for i in range(3)}
    entries = []
    for i, body in bodies.items():
        model_server.add(f"/f/m{i}.safetensors", body, delay_s=0.3)
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
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.starmap(
            provision_many,
            [(str(models_dir), model_server.port, catalogue, refs) for refs in jobs],
            chunksize=1,
        )
    want = {f"m{i}": hashlib.sha256(b).hexdigest() for i, b in bodies.items()}
    for refs, shas in zip(jobs, results, strict=True):
        assert shas == [want[r] for r in refs]
    for i in range(3):
        assert len(model_server.gets(f"/f/m{i}.safetensors")) == 1
    registry = LiveRegistry.model_validate_json((models_dir / "cache_registry.json").read_bytes())
    assert sorted(registry.models) == [f"lora/m{i}.safetensors" for i in range(3)]
    assert all(
        e.usable and e.downloaded and e.sha256 == want[e.registry_id] for e in registry.models.values()
    )
    assert sum(e.use_count for e in registry.models.values()) == 16
    assert not [p for p in (models_dir / "loras").iterdir() if p.name.startswith(".")]


def test_writer_killed_mid_write_leaves_registry_intact(tmp_path):
    path = tmp_path / "cache_registry.json"
    ctx = multiprocessing.get_context("spawn")
    for delay in (0.9, 1.1, 1.3):
        proc = ctx.Process(target=write_forever, args=(str(path),))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        registry = LiveRegistry.model_validate_json(path.read_bytes())  # whole, parseable file
        assert len(registry.models) == 200
    # the kernel released the dead writer's lock: the next write goes through at once
    store = RegistryStore(path, lock_timeout_s=2)
    store.update(lambda reg: reg.models.clear())
    assert store.read().models == {}
    assert not list(tmp_path.glob("*.corrupt-*"))
