"""Models straight from training through the whole job path, on a real embedded engine over HTTP.

The worker is run twice over the same volume: as it behaves in front of A1111 (``WORKER_ENGINE=a1111``:
a diffusers/PEFT LoRA or a diffusers folder is converted once, or refused with the command that converts
it) and in front of the embedded engine (which uses them as they are). Both must make the same image.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.embedded_engine import EmbeddedEngine, run_engine
from tests.support.model_server import ModelServer, model_server  # noqa: F401  (fixture)
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry import ModelRegistry
from worker.settings import WorkerSettings

pytestmark = pytest.mark.engine
SMALL = {"steps": 3, "width": 64, "height": 64, "seed": 11, "sampler": "Euler"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEngine]:
    pytest.importorskip("diffusers")
    from diffusers_server.demo_models import make_demo_models
    from tests.support.training_outputs import save_diffusers_lora, tiny_pipeline, train_lora

    root = tmp_path_factory.mktemp("training-volume")
    make_demo_models(root)
    work = tmp_path_factory.mktemp("training-work")
    # LoRAs trained on the demo checkpoint's architecture, saved as diffusers' training scripts save them
    for name, seed in (("trained-style", 5), ("strict-style", 6)):
        trained = train_lora(tiny_pipeline("sd15", work / "tok"), seed=seed)
        saved = save_diffusers_lora(trained, work / name, old_format=True, metadata=True)
        saved.rename(root / "loras" / f"{name}.safetensors")
    tiny_pipeline("sd15", work / "tok", seed=3).save_pretrained(root / "checkpoints" / "finetune")
    with run_engine(
        root, tmp_path_factory.mktemp("training-engine-log") / "engine.log", "--ckpt", "demo-sd15-tiny"
    ) as running:
        yield running


def run_job(
    engine: EmbeddedEngine, tmp_path: Path, job: dict[str, Any], engine_kind: str, **settings: Any
) -> dict[str, Any]:
    fields = {
        "engine": engine_kind,
        "a1111_url": engine.url,
        "models_dir": engine.models_dir,
        "registry_path": engine.models_dir / "registry.json",
        "job_timeout_s": 120,
        "request_timeout_s": 60,
        **settings,
    }
    worker = WorkerSettings.model_validate(fields)
    runner = JobRunner(
        worker, A1111Client(engine.url, request_timeout_s=60), provider=ModelRegistry.from_settings(worker)
    )
    out = runner.run({"id": "training", "input": {**SMALL, **job}})
    assert isinstance(out, dict)
    return out


def pixels(out: dict[str, Any]) -> str:
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(base64.b64decode(out["images"][0])))
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def test_a_diffusers_lora_is_converted_once_in_front_of_a1111_and_used_as_is_by_the_embedded_engine(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    job = {"prompt": "a lighthouse <lora:trained-style:0.9>", "checkpoint": "demo-sd15-tiny"}
    first = run_job(engine, tmp_path, job, engine_kind="a1111")
    assert "error" not in first, first
    warning = next(w for w in first["warnings"] if "trained-style" in w)
    assert "lora trained-style.safetensors (diffusers layout) cannot be used by a1111 as it is" in warning
    assert "using trained-style-kohya.safetensors, converted in" in warning
    assert first["timings_ms"]["provision"] > 0
    assert "<lora:trained-style-kohya:0.9>" in first["parameters"]["prompt"]
    assert (engine.models_dir / "loras" / "trained-style-kohya.safetensors").is_file()

    again = run_job(engine, tmp_path, job, engine_kind="a1111")
    assert any("converted earlier" in w for w in again["warnings"])
    assert pixels(again) == pixels(first)

    embedded = run_job(engine, tmp_path, job, engine_kind="embedded")
    assert not [w for w in embedded["warnings"] if "converted" in w]
    assert "<lora:trained-style:0.9>" in embedded["parameters"]["prompt"]
    assert pixels(embedded) == pixels(first)  # the original, applied by the embedded engine, is the same LoRA
    plain = run_job(engine, tmp_path, {**job, "prompt": "a lighthouse"}, engine_kind="embedded")
    assert pixels(plain) != pixels(first)


def test_without_automatic_conversion_the_job_is_refused_with_the_command(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    out = run_job(
        engine,
        tmp_path,
        {"prompt": "x", "loras": [{"name": "strict-style", "weight": 1}], "checkpoint": "demo-sd15-tiny"},
        engine_kind="a1111",
        auto_convert=False,
    )
    assert out["error"].startswith("model_incompatible: lora strict-style.safetensors is a diffusers layout")
    assert "python -m worker registry convert loras/strict-style.safetensors --to a1111" in out["error"]
    assert not (engine.models_dir / "loras" / "strict-style-kohya.safetensors").exists()


def test_a_diffusers_folder_serves_both_engines_with_the_same_pixels(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    job = {"prompt": "a lighthouse", "checkpoint": "finetune"}
    direct = run_job(engine, tmp_path, job, engine_kind="embedded")
    assert "error" not in direct, direct
    assert direct["models"]["checkpoint"]["title"].startswith("finetune [")
    assert not (engine.models_dir / "checkpoints" / "finetune.safetensors").exists()

    converted = run_job(engine, tmp_path, job, engine_kind="a1111")
    assert "error" not in converted, converted
    assert converted["models"]["checkpoint"]["title"].startswith("finetune.safetensors [")
    assert any("diffusers layout) cannot be used by a1111" in w for w in converted["warnings"])
    assert pixels(converted) == pixels(direct)


def test_a_peft_lora_named_in_a_prompt_tag_is_sent_under_its_converted_name(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    """Copied onto the volume after the engine listed its LoRAs, a bare PEFT state named in a tag is
    converted and the tag rewritten to the converted file's name (once refused: "differs from the engine's
    name 'peft_style-kohya'")."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from tests.support.training_outputs import tiny_pipeline, train_lora

    trained = train_lora(tiny_pipeline("sd15", tmp_path / "tok"), text=False, seed=9)
    state = {k: v.contiguous() for k, v in get_peft_model_state_dict(trained.trained.unet).items()}
    save_file(state, str(engine.models_dir / "loras" / "peft_style.safetensors"))
    job = {"prompt": "a lighthouse <lora:peft_style:1>", "checkpoint": "demo-sd15-tiny"}
    out = run_job(engine, tmp_path, job, engine_kind="a1111")
    assert "error" not in out, out
    assert (engine.models_dir / "loras" / "peft_style-kohya.safetensors").is_file()
    assert "<lora:peft_style-kohya:1>" in out["parameters"]["prompt"]
    assert (
        "prompt tag <lora:peft_style:…> sent as <lora:peft_style-kohya:…>, the converted file's name as the "
        "engine lists it" in out["warnings"]
    )
    assert any("lora peft_style.safetensors (peft layout)" in w for w in out["warnings"])


def test_a_registry_job_makes_the_embedded_engine_list_a_new_lora_at_once(
    engine: EmbeddedEngine,
    tmp_path: Path,
    model_server: ModelServer,  # noqa: F811
) -> None:
    import requests

    from worker.registry.jobs import RegistryJobs

    body = (engine.models_dir / "loras" / "strict-style.safetensors").read_bytes()
    model_server.add("/files/pulled-style.safetensors", body)
    settings = WorkerSettings.model_validate(
        {
            "a1111_url": engine.url,
            "models_dir": engine.models_dir,
            "allow_model_jobs": True,
            "engine": "embedded",
            "download_allowed_hosts": f"127.0.0.1:{model_server.port}",
        }
    )
    registry = ModelRegistry.from_settings(settings)
    runner = JobRunner(
        settings,
        A1111Client(engine.url),
        provider=registry,
        model_jobs=RegistryJobs(registry, engine="embedded"),
    )
    url = f"{model_server.url}/files/pulled-style.safetensors"
    out = runner.run({"id": "pull", "input": {"registry": {"action": "pull", "ref": url, "kind": "lora"}}})
    assert isinstance(out, dict) and out["refreshed"] == ["loras"], out
    listed = requests.get(f"{engine.url}/sdapi/v1/loras", timeout=30).json()
    assert "pulled-style" in [item["name"] for item in listed]
