"""Registry jobs in several worker processes on one volume: one download for two pulls of the same file, and
a worker serving jobs while another prunes the volume never loads a half-removed model.
"""

from __future__ import annotations

import hashlib
import multiprocessing

import numpy as np
from filelock import FileLock
from safetensors.numpy import save_file

from tests.registry.fixtures import model_bytes
from tests.registry.training_fixtures import write_pipeline_skeleton
from tests.registry.workers import HANG_S, load_while_pruned, pull_job, remove_job
from worker.redaction import public_url

SPAWN = multiprocessing.get_context("spawn")


def _joined(procs: list) -> None:
    for proc in procs:
        proc.join(timeout=HANG_S)
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_two_workers_pulling_the_same_url_download_it_once(models_dir, model_server):
    body = model_bytes("lora-sdxl", seed=21)
    model_server.add("/f/shared.safetensors", body)
    url = f"{model_server.url}/f/shared.safetensors"
    key = "url-" + hashlib.sha256(public_url(url).encode()).hexdigest()[:16]
    held = FileLock(str(models_dir / ".locks" / f"{key}.lock"))
    (models_dir / ".locks").mkdir()
    held.acquire()  # both workers reach the model lock before either may download
    arrived = [SPAWN.Event(), SPAWN.Event()]
    queue = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=pull_job, args=(str(models_dir), model_server.port, url, event, queue))
        for event in arrived
    ]
    for proc in procs:
        proc.start()
    try:
        for event in arrived:
            assert event.wait(HANG_S), "a worker never reached the model lock"
    finally:
        held.release()
    outputs = [queue.get(timeout=HANG_S) for _ in procs]
    _joined(procs)
    assert len(model_server.gets("/f/shared.safetensors")) == 1
    assert {o["sha256"] for o in outputs} == {hashlib.sha256(body).hexdigest()}
    assert ["downloaded by another worker"] in [o["notes"] for o in outputs]
    assert (models_dir / "loras" / "shared.safetensors").read_bytes() == body
    assert not [p for p in (models_dir / "loras").iterdir() if p.name.startswith(".")]


def test_a_worker_serving_jobs_never_loads_a_model_folder_another_worker_is_removing(models_dir):
    folder = write_pipeline_skeleton(models_dir / "checkpoints" / "pipe")
    for i in range(300):  # a folder that takes a while to delete file by file
        save_file(
            {"w": np.full((4,), i, dtype=np.float16)}, str(folder / "unet" / f"shard-{i:03}.safetensors")
        )
    expected = {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    first = SPAWN.Event()
    loads, removal = SPAWN.Queue(), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=load_while_pruned, args=(str(models_dir), "pipe", expected, first, loads)),
        SPAWN.Process(target=remove_job, args=(str(models_dir), "pipe", first, removal)),
    ]
    for proc in procs:
        proc.start()
    outcomes = loads.get(timeout=HANG_S)
    removed = removal.get(timeout=HANG_S)
    _joined(procs)
    assert removed["removed"] == "checkpoints/pipe"
    assert "partial" not in outcomes, outcomes
    assert outcomes[0] == "complete" and outcomes[-1] == "gone"
    assert not folder.exists() and not list((models_dir / "checkpoints").iterdir())
