"""A catalogue model baked into the image is served by its catalogue id, with nothing downloaded.

Found by the image suite: ``--build-arg BAKE_MODEL=deliberate-v6`` puts ``Deliberate_v6.safetensors`` in A1111's
own folder (not on the volume), A1111 lists it, yet a job or ``WORKER_DEFAULT_CHECKPOINT`` naming
``deliberate-v6`` made the registry download it from Hugging Face, and the worker failed to start offline.
Here downloads are impossible (no allowed host): any attempt fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry
from worker.settings import WorkerSettings
from worker.startup import resolve_default_checkpoint

SHA = "9aba26abdf" + "ef" * 27
BAKED = {
    "title": f"Deliberate_v6.safetensors [{SHA[:10]}]",
    "model_name": "Deliberate_v6",
    "hash": SHA[:10],
    "sha256": SHA,
    "filename": "/opt/a1111-data/models/Stable-diffusion/Deliberate_v6.safetensors",
    "config": None,
}
ENTRY = {
    "id": "deliberate-v6",
    "kind": "checkpoint",
    "file_name": "Deliberate_v6.safetensors",
    "architecture": "sd15",
    "source": {"type": "huggingface", "repo": "XpucT/Deliberate", "file": "Deliberate_v6.safetensors"},
}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    return ModelRegistry(
        models_dir=models,
        registry_path=models / "registry.json",
        catalogue=Catalogue.model_validate({"models": [ENTRY]}),
        allowed_hosts=(),
    )


def test_a_job_naming_the_catalogue_id_runs_on_the_baked_file(
    fake_a1111: FakeA1111, registry: ModelRegistry
) -> None:
    fake_a1111.data.checkpoints.append(BAKED)
    settings = WorkerSettings(a1111_url=fake_a1111.url, models_dir=registry.models_dir)  # type: ignore[arg-type]
    runner = JobRunner(settings, A1111Client(fake_a1111.url), provider=registry)
    out = runner.run({"id": "baked", "input": {"prompt": "a cat", "checkpoint": "deliberate-v6", "steps": 2}})
    assert isinstance(out, dict) and "error" not in out, out
    sent = fake_a1111.requests_to("txt2img")[0].body
    assert sent["override_settings"]["sd_model_checkpoint"].startswith("Deliberate_v6.safetensors"), sent
    assert not (registry.models_dir / "checkpoints" / "Deliberate_v6.safetensors").exists()


def test_the_default_checkpoint_may_name_the_baked_catalogue_id(
    fake_a1111: FakeA1111, registry: ModelRegistry
) -> None:
    fake_a1111.data.checkpoints.append(BAKED)
    title = resolve_default_checkpoint(A1111Client(fake_a1111.url), "deliberate-v6", registry)
    assert title == BAKED["title"]
