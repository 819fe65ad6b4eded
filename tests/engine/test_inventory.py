"""The embedded engine's model inventory on a hostile volume.

One engine process serves a models folder that sits below a dotted folder and holds an HTML page saved as a
LoRA, a FIFO in vae/, a checkpoint symlinked from outside the folder and a checkpoint deleted after listing.
The engine must start, list every bad file as unusable with its reason, skip it, and keep answering 4xx.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.embedded_engine import EmbeddedEngine, run_engine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(180)]

SMALL = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEngine]:
    pytest.importorskip("torch")
    from diffusers_server.demo_models import make_demo_models

    base = tmp_path_factory.mktemp("inventory")
    root = base / ".cache" / "models"  # a dotted folder above the models folder is fine
    paths = make_demo_models(root)
    (root / "loras" / "error-page.safetensors").write_text("<html><body>403 Forbidden</body></html>")
    os.mkfifo(root / "vae" / "pipe.safetensors")
    outside = base / "elsewhere" / "outside.safetensors"
    outside.parent.mkdir()
    shutil.copy(paths["sd15"], outside)
    (root / "checkpoints" / "outside.safetensors").symlink_to(outside)
    shutil.copy(paths["sd15"], root / "checkpoints" / "doomed.safetensors")
    with run_engine(root, base / "engine.log", "--ckpt", "demo-sd15-tiny") as engine:
        yield engine


@pytest.fixture(scope="module")
def api(hostile: EmbeddedEngine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile.url + "/sdapi/v1", timeout=120) as client:
        yield client


def _unusable(api: httpx.Client) -> dict[str, str]:
    response = api.get("/unusable-models")
    assert response.status_code == 200
    return {Path(item["filename"]).name: item["reason"] for item in response.json()}


def test_bad_files_are_listed_as_unusable_and_skipped(api: httpx.Client) -> None:
    checkpoints = {Path(m["filename"]).name for m in api.get("/sd-models").json()}
    assert checkpoints == {"demo-sd15-tiny.safetensors", "doomed.safetensors"}
    assert [lora["name"] for lora in api.get("/loras").json()] == ["demo-lora-tiny"]
    assert [vae["model_name"] for vae in api.get("/sd-vae").json()] == ["demo-vae-tiny.safetensors"]
    unusable = _unusable(api)
    assert "not a usable safetensors file" in unusable["error-page.safetensors"]
    assert "FIFO" in unusable["pipe.safetensors"]
    assert "outside the models folder" in unusable["outside.safetensors"]


def test_refresh_with_bad_files_answers_200_and_lists_new_ones(
    api: httpx.Client, hostile: EmbeddedEngine
) -> None:
    (hostile.models_dir / "loras" / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    for kind in ("checkpoints", "loras", "embeddings", "vae"):
        assert api.post(f"/refresh-{kind}").status_code == 200, kind
    assert "truncated.safetensors" in _unusable(api)
    assert txt2img_ok(api, prompt="a cat <lora:demo-lora-tiny:0.5>")


def test_outside_checkpoint_cannot_be_selected(api: httpx.Client) -> None:
    response = api.post("/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "outside"}})
    assert response.status_code == 404 and "not found" in response.json()["detail"]


def test_checkpoint_deleted_after_listing_is_a_404_without_paths(
    api: httpx.Client, hostile: EmbeddedEngine
) -> None:
    (hostile.models_dir / "checkpoints" / "doomed.safetensors").unlink()
    response = api.post("/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "doomed"}})
    assert response.status_code == 404, response.text
    assert "removed from disk" in response.json()["detail"]
    assert str(hostile.models_dir) not in response.text
    titles = [m["title"] for m in api.get("/sd-models").json()]
    assert all("doomed" not in title for title in titles)  # the listing was refreshed
    assert txt2img_ok(api)


def txt2img_ok(api: httpx.Client, **fields: str) -> bool:
    response = api.post("/txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    return bool(response.json()["images"])


def test_checkpoint_deleted_after_preflight_is_model_not_found_through_the_worker(
    api: httpx.Client, hostile: EmbeddedEngine
) -> None:
    from worker.a1111.client import A1111Client
    from worker.handler import JobRunner
    from worker.settings import WorkerSettings

    ckpt = hostile.models_dir / "checkpoints"
    shutil.copy(ckpt / "demo-sd15-tiny.safetensors", ckpt / "fleeting.safetensors")
    assert api.post("/refresh-checkpoints").status_code == 200
    settings = WorkerSettings(a1111_url=hostile.url)  # type: ignore[arg-type]
    with A1111Client(hostile.url) as engine:
        runner = JobRunner(settings, engine)
        engine.catalog()  # pre-flight's view: the file is listed
        (ckpt / "fleeting.safetensors").unlink()
        job = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1, "checkpoint": "fleeting"}
        out = runner.run({"id": "gone", "input": job})
    assert isinstance(out, dict)
    assert out["error"].startswith("model_not_found: ") and "fleeting" in out["error"], out
    assert str(hostile.models_dir) not in out["error"] and "refresh_worker" not in out
