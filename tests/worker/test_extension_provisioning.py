"""A catalogued ControlNet or ADetailer detector that is not on the volume is provisioned before A1111 sees
the job, as checkpoints and LoRAs are: downloaded from the loopback server into its kind folder, hash-checked,
under the same policy (allowlist, pickles only with ``WORKER_ALLOW_PICKLE``). The fake A1111 serves the
listings the real extensions answered (tests/fixtures/a1111/extensions.json), its ControlNet listing rescanning
the volume's ``ControlNet/`` on every call as the real one does; ADetailer's list is fixed at start, as the
real one's is (docs/extensions.md), so a detector provisioned now is refused naming the restart it needs."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from tests.support.fake_a1111 import FakeA1111
from tests.support.model_server import ModelServer, model_server
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry
from worker.settings import WorkerSettings

__all__ = ["model_server"]  # the fixture

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "a1111" / "extensions.json").read_text())
LISTINGS: dict[str, Any] = RECORDED["listings"]
IMAGE = RECORDED["meta"]["control_image"]
CONTROLNET_LIST = "/controlnet/model_list"


def tiny_controlnet() -> bytes:
    """An SD1.5 ControlNet as the registry sees one: the published ``control_model.*`` layout, the
    cross-attention context 768 wide; random values (a few KB)."""
    rng = np.random.default_rng(18)
    shapes = {
        "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768),
        "control_model.zero_convs.0.0.weight": (8, 8, 1, 1),
    }
    return save({name: rng.standard_normal(shape).astype(np.float16) for name, shape in shapes.items()})


def tiny_detector() -> bytes:
    """A stand-in for a YOLO ``.pt`` (a pickle, as ultralytics writes them); nothing here unpickles it."""
    buffer = io.BytesIO()
    pickle.dump({"model": None, "train_args": {"task": "detect"}}, buffer)
    return buffer.getvalue()


class RescanningListings(dict[str, Any]):
    """The extensions' listings, ``/controlnet/model_list`` read from the volume on each call: the real
    ControlNet rescans its folders whenever it is listed."""

    def __init__(self, listings: dict[str, Any], controlnet_dir: Path) -> None:
        super().__init__(listings)
        self.controlnet_dir = controlnet_dir

    def __getitem__(self, path: str) -> Any:
        if path != CONTROLNET_LIST:
            return super().__getitem__(path)
        titles = [
            f"{file.stem} [{hashlib.sha256(file.read_bytes()).hexdigest()[:8]}]"
            for file in sorted(self.controlnet_dir.glob("*.safetensors"))
        ]
        return {"model_list": titles}


CONTROLNET_BYTES = tiny_controlnet()
DETECTOR_BYTES = tiny_detector()


def catalogue(server: ModelServer, **sha256: str) -> Catalogue:
    """Two catalogue entries of the extensions' kinds, served by ``server``."""
    entries = [
        {
            "id": "controlnet-canny-sd15",
            "name": "ControlNet 1.1 canny (SD1.5)",
            "kind": "controlnet",
            "file_name": "control_v11p_sd15_canny.safetensors",
            "architecture": "sd15",
            "source": {"type": "url", "url": f"{server.url}/control.safetensors"},
            "sha256": sha256.get("controlnet", hashlib.sha256(CONTROLNET_BYTES).hexdigest()),
        },
        {
            "id": "face-yolov8n",
            "name": "ADetailer face detector YOLOv8n",
            "kind": "adetailer",
            "file_name": "face_yolov8n.pt",
            "source": {"type": "url", "url": f"{server.url}/face.pt"},
            "sha256": sha256.get("adetailer", hashlib.sha256(DETECTOR_BYTES).hexdigest()),
        },
    ]
    return Catalogue.model_validate({"models": entries})


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    for kind in ("checkpoints", "ControlNet", "adetailer"):
        (models / kind).mkdir(parents=True)
    return models


@pytest.fixture
def fake(fake_a1111: FakeA1111, volume: Path) -> FakeA1111:
    fake_a1111.data.scripts = LISTINGS["/sdapi/v1/scripts"]
    routes = {path: body for path, body in LISTINGS.items() if not path.startswith("/sdapi/")}
    fake_a1111.data.extension_routes = RescanningListings(routes, volume / "ControlNet")
    return fake_a1111


@pytest.fixture
def served(model_server: ModelServer) -> ModelServer:
    model_server.add("/control.safetensors", CONTROLNET_BYTES)
    model_server.add("/face.pt", DETECTOR_BYTES)
    return model_server


def runner_for(fake: FakeA1111, volume: Path, server: ModelServer, **options: Any) -> JobRunner:
    registry = ModelRegistry(
        models_dir=volume,
        registry_path=volume / "registry.json",
        catalogue=options.pop("catalogue", None) or catalogue(server),
        allowed_hosts=(f"127.0.0.1:{server.port}",),
        timeout_s=5.0,
        attempts=1,
        allow_pickle=options.pop("allow_pickle", False),
    )
    settings = WorkerSettings.model_validate({"a1111_url": fake.url, "job_timeout_s": 10})
    client = A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5)
    return JobRunner(settings, client, provider=registry)


def run(runner: JobRunner, scripts: dict[str, Any]) -> Any:
    job = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": scripts}
    return runner.run({"id": "provision", "input": job})


def canny(model: str) -> dict[str, Any]:
    unit = {"enabled": True, "module": "canny", "model": model, "image": IMAGE}
    return {"controlnet": {"args": [unit]}}


def detector(model: str) -> dict[str, Any]:
    return {"ADetailer": {"args": [True, False, {"ad_model": model}]}}


def test_a_catalogued_controlnet_is_downloaded_verified_and_listed_before_generating(
    fake: FakeA1111, volume: Path, served: ModelServer
) -> None:
    out = run(runner_for(fake, volume, served), canny("control_v11p_sd15_canny"))
    assert isinstance(out, dict) and "error" not in out, out
    landed = volume / "ControlNet" / "control_v11p_sd15_canny.safetensors"
    assert landed.read_bytes() == CONTROLNET_BYTES
    assert any(
        "downloaded before generating: controlnet:control_v11p_sd15_canny" in w for w in out["warnings"]
    )
    sent = fake.requests_to("txt2img")[0].body
    assert sent["alwayson_scripts"]["controlnet"]["args"][0]["model"] == "control_v11p_sd15_canny"
    registered = json.loads((volume / "registry.json").read_text())["models"]
    entry = registered["controlnet/control_v11p_sd15_canny.safetensors"]
    assert (entry["registry_id"], entry["architecture"], entry["downloaded"]) == (
        "controlnet-canny-sd15",
        "sd15",
        True,
    )
    again = run(runner_for(fake, volume, served), canny("control_v11p_sd15_canny"))
    assert "error" not in again, again
    assert len(served.gets("/control.safetensors")) == 1  # the second job finds it on the volume


def test_a_controlnet_whose_hash_differs_from_the_catalogue_is_refused_and_not_kept(
    fake: FakeA1111, volume: Path, served: ModelServer
) -> None:
    wrong = catalogue(served, controlnet="0" * 64)
    out = run(runner_for(fake, volume, served, catalogue=wrong), canny("control_v11p_sd15_canny"))
    assert str(out.get("error", "")).startswith("download_failed: "), out
    assert "sha256" in out["error"], out
    assert list((volume / "ControlNet").glob("*.safetensors")) == []
    assert fake.requests_to("txt2img") == []


def test_a_controlnet_named_by_its_catalogue_id_is_provisioned_then_must_be_named_by_file(
    fake: FakeA1111, volume: Path, served: ModelServer
) -> None:
    """ControlNet finds a unit's model by file name: the catalogue id would reach A1111 unresolved."""
    out = run(runner_for(fake, volume, served), canny("controlnet-canny-sd15"))
    assert str(out.get("error", "")).startswith("input_invalid: "), out
    assert "alwayson_scripts.controlnet.args[0].model" in out["error"]
    assert "name it 'control_v11p_sd15_canny'" in out["error"], out
    assert (volume / "ControlNet" / "control_v11p_sd15_canny.safetensors").exists()
    assert fake.requests_to("txt2img") == []


def test_an_unknown_controlnet_is_still_not_found_with_the_nearest_names(
    fake: FakeA1111, volume: Path, served: ModelServer
) -> None:
    out = run(runner_for(fake, volume, served), canny("control_v11p_sd15_cany_nope"))
    assert str(out.get("error", "")).startswith("model_not_found: "), out
    assert served.requests == []


def test_a_catalogued_detector_is_downloaded_then_refused_until_a1111_restarts(
    fake: FakeA1111, volume: Path, served: ModelServer
) -> None:
    runner = runner_for(fake, volume, served, allow_pickle=True)
    out = run(runner, detector("face_yolov8n.pt"))
    assert str(out.get("error", "")).startswith("model_not_found: "), out
    assert "alwayson_scripts.ADetailer.args[2].ad_model" in out["error"]
    assert "only when A1111 starts" in out["error"] and "restart" in out["error"], out
    assert (volume / "adetailer" / "face_yolov8n.pt").read_bytes() == DETECTOR_BYTES
    assert fake.requests_to("txt2img") == []
    again = run(runner_for(fake, volume, served, allow_pickle=True), detector("face-yolov8n"))
    assert "restart" in again["error"], again
    assert len(served.gets("/face.pt")) == 1


def test_a_detector_is_a_pickle_and_not_downloaded_without_allow_pickle(
    fake: FakeA1111, volume: Path, served: ModelServer
) -> None:
    out = run(runner_for(fake, volume, served), detector("face_yolov8n.pt"))
    assert str(out.get("error", "")).startswith("download_failed: "), out
    assert "face_yolov8n.pt" in out["error"], out
    assert list((volume / "adetailer").iterdir()) == []
    assert fake.requests_to("txt2img") == []
