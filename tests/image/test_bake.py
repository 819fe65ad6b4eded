"""A ``BAKE_MODEL`` build serves the baked model (the catalogue's file taken from a local file, not downloaded).

The test checkpoint ``tiny_b`` (with its model config) becomes catalogue entry ``deliberate-v6`` at build time:
the registry finds it where the pull would have put it, ``start.sh --bake-models`` moves it into A1111's own
models folder, and a job naming the catalogue id runs on it with nothing of it on the volume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.podman import VOLUME, Container, ensure_image

pytestmark = pytest.mark.timeout(3600)

BAKED_TAG = "localhost/a1111-worker:test-baked"
JOB: dict[str, Any] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module")
def baked(image: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    if not os.environ.get("A1111_SOURCES"):
        pytest.skip("the BAKE_MODEL build needs A1111_SOURCES (the offline build's git repositories)")
    source = tmp_path_factory.mktemp("bake") / "tiny_b.safetensors"
    source.write_bytes((tiny_models / "checkpoints" / "tiny_b.safetensors").read_bytes())
    source.with_suffix(".yaml").write_text((tiny_models / "checkpoints" / "tiny_b.yaml").read_text())
    tag = ensure_image(bake=("deliberate-v6", source), tag=BAKED_TAG)
    # the volume holds the text encoder the configs name, but no checkpoint of the baked one's name
    box = Container(
        tag,
        env={"WORKER_MODE": "local", "WORKER_DEFAULT_CHECKPOINT": "deliberate-v6"},
        volumes={tiny_models: VOLUME},
        options=["--network", "none"],
    ).start()
    try:
        yield box
    finally:
        box.remove()


def test_the_baked_model_is_in_a1111s_own_folder(baked: Container) -> None:
    listing = baked.exec("ls", "/opt/a1111-data/models/Stable-diffusion").stdout.split()
    assert listing == ["Deliberate_v6.safetensors", "Deliberate_v6.yaml"], listing
    assert not list(Path(baked.volumes and next(iter(baked.volumes))).glob("checkpoints/Deliberate*"))


def test_a_job_runs_on_the_baked_model(baked: Container) -> None:
    baked.wait_healthy(600)
    baked.wait_local_api(600)  # the worker is ready once it has loaded its default checkpoint, the baked one
    status, body = baked.curl("http://127.0.0.1:3000/worker/v1/health")
    assert status == 200 and json.loads(body)["checkpoint"].startswith("Deliberate_v6.safetensors"), body
    status, body = baked.curl(
        "http://127.0.0.1:8000/runsync",
        "-X", "POST", "-H", "Content-Type: application/json",
        "-d", json.dumps({"input": {**JOB, "checkpoint": "deliberate-v6"}}),
    )  # fmt: skip
    done = json.loads(body)
    assert status == 200 and done["status"] == "COMPLETED", body
    assert len(done["output"]["images"]) == 1, body
