"""With A1111 as the engine (which lists whatever its folders hold), the worker applies the registry's file
policy before generating: a model symlinked from outside the volume is refused, nothing is sent to txt2img."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.registry.fixtures import model_bytes
from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry
from worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("kind_dir", "file_name", "job"),
    [
        ("checkpoints", "demo.safetensors", {"checkpoint": "demo"}),
        ("vae", "sdxl_vae.safetensors", {"vae": "sdxl_vae.safetensors"}),
        ("loras", "pixel_art.safetensors", {"loras": [{"name": "pixel_art", "weight": 0.5}]}),
    ],
)
def test_a_model_linked_from_outside_the_volume_is_refused(
    fake_a1111: FakeA1111, tmp_path: Path, kind_dir: str, file_name: str, job: dict[str, object]
) -> None:
    outside = tmp_path / "elsewhere" / file_name
    outside.parent.mkdir()
    outside.write_bytes(model_bytes("checkpoint-sd15"))
    models = tmp_path / "models"
    (models / kind_dir).mkdir(parents=True)
    (models / kind_dir / file_name).symlink_to(outside)
    registry = ModelRegistry(
        models_dir=models,
        registry_path=models / "registry.json",
        catalogue=Catalogue(),
        allowed_hosts=(),
    )
    settings = WorkerSettings(a1111_url=fake_a1111.url, models_dir=models)  # type: ignore[arg-type]
    runner = JobRunner(settings, A1111Client(fake_a1111.url), provider=registry)
    out = runner.run({"id": "link", "input": {"prompt": "a cat", **job}})
    assert isinstance(out, dict) and out["error"].startswith("model_incompatible: "), out
    assert "outside the models folder" in out["error"]
    assert fake_a1111.requests_to("txt2img") == []
