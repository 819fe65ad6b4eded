"""The worker end to end against the real embedded engine (tiny random models) over real HTTP.

Same job path as production: schema → pre-flight against the engine's lists (and the registry) →
translation → txt2img → output. The images are noise; what is checked is that every parameter the
job asked for reached the engine and is recorded in the image's own infotext.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from safetensors.numpy import load_file, save

from tests.support.fixtures import job_fixture, load_json
from tests.support.model_server import ModelServer, model_server  # noqa: F401  (fixture)
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry import ModelRegistry
from worker.settings import WorkerSettings

pytestmark = pytest.mark.engine

LONG_PROMPT = ", ".join(f"detailed word{i} scenery" for i in range(70))  # well over 200 tokens


def make_runner(engine_url: str, models_dir: Path, tmp_path: Path, **extra: Any) -> JobRunner:
    fields: dict[str, Any] = {
        "a1111_url": engine_url,
        "models_dir": models_dir,
        "registry_path": tmp_path / "registry.json",
        "job_timeout_s": 120,
        "request_timeout_s": 60,
    }
    settings = WorkerSettings.model_validate({**fields, **extra})
    engine = A1111Client(engine_url, request_timeout_s=60)
    return JobRunner(settings, engine, provider=ModelRegistry.from_settings(settings))


def infotext(image_b64: str) -> str:
    return str(Image.open(io.BytesIO(base64.b64decode(image_b64))).info["parameters"])


def test_native_job_reaches_the_engine_intact(embedded_engine: Any, tmp_path: Path) -> None:
    runner = make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path)
    out = runner.run(
        {
            "id": "e2e-1",
            "input": {
                "prompt": LONG_PROMPT,
                "negative_prompt": "blurry",
                "checkpoint": "demo-sd15-tiny",
                "loras": [{"name": "demo-lora-tiny", "weight": 0.7}],
                "sampler": "DPM++ 2M Karras",
                "clip_skip": 2,
                "steps": 3,
                "width": 64,
                "height": 64,
                "seed": 5,
                "batch_size": 2,
            },
        }
    )
    assert isinstance(out, dict) and "error" not in out, out
    assert out["seeds"] == [5, 6]
    assert len(out["images"]) == 2
    text = infotext(out["images"][0])
    assert text.startswith(LONG_PROMPT)  # never truncated
    assert "<lora:demo-lora-tiny:0.7>" in text
    for fragment in ("Sampler: DPM++ 2M", "Schedule type: Karras", "Clip skip: 2", "Seed: 5", "Size: 64x64"):
        assert fragment in text
    assert "demo-lora-tiny" in json.loads(out["info"])["extra_generation_params"].get("Lora hashes", "")
    assert out["models"]["checkpoint"]["title"].startswith("demo-sd15-tiny.safetensors [")
    assert out["models"]["checkpoint"]["architecture"] == "sd15"
    assert out["models"]["loras"][0]["name"] == "demo-lora-tiny"
    assert out["models"]["loras"][0]["architecture"] == "sd15"  # the demo LoRA records its base model


def test_same_seed_same_image(embedded_engine: Any, tmp_path: Path) -> None:
    runner = make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path)
    job = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler": "Euler"}
    first = runner.run({"id": "a", "input": job})
    second = runner.run({"id": "b", "input": job})
    other = runner.run({"id": "c", "input": {**job, "seed": 12}})
    assert isinstance(first, dict) and isinstance(second, dict) and isinstance(other, dict)
    assert first["images"] == second["images"]
    assert first["images"] != other["images"]


@pytest.mark.parametrize(
    ("job_input", "code", "fragment"),
    [
        ({"prompt": "a", "checkpoint": "demo-sd15-tny"}, "model_not_found", "demo-sd15-tiny"),
        ({"prompt": "a <lora:demo-lora-tny:1>"}, "model_not_found", "demo-lora-tiny"),
        ({"prompt": "a", "sampler": "Euler ancestral"}, "input_invalid", "Euler a"),
        ({"prompt": "a", "width": 65}, "input_invalid", "multiple of 8"),
    ],
)
def test_bad_names_against_the_real_engine(
    embedded_engine: Any, tmp_path: Path, job_input: dict[str, Any], code: str, fragment: str
) -> None:
    out = make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path).run(
        {"id": "x", "input": job_input}
    )
    assert isinstance(out, dict)
    assert out["error"].startswith(f"{code}: ") and fragment in out["error"], out


def test_catalogue_lora_is_downloaded_then_used(
    embedded_engine: Any,
    tmp_path: Path,
    model_server: ModelServer,  # noqa: F811
) -> None:
    # The demo LoRA's tensors under new metadata: a different file (and hash) the engine can load.
    tensors = load_file(embedded_engine.models_dir / "loras" / "demo-lora-tiny.safetensors")
    lora_bytes = save(tensors, metadata={"ss_output_name": "e2e-provisioned-lora"})
    model_server.add("/files/e2e-lora.safetensors", lora_bytes)
    catalogue = tmp_path / "catalogue.json"
    entry = {
        "id": "e2e-lora",
        "kind": "lora",
        "file_name": "e2e-provisioned-lora.safetensors",
        "architecture": "sd15",
        "source": {"type": "url", "url": f"{model_server.url}/files/e2e-lora.safetensors"},
        "sha256": hashlib.sha256(lora_bytes).hexdigest(),
        "size": len(lora_bytes),
        "default_weight": 0.5,
    }
    catalogue.write_text(json.dumps({"schema_version": 1, "models": [entry]}), encoding="utf-8")
    runner = make_runner(
        embedded_engine.url,
        embedded_engine.models_dir,
        tmp_path,
        catalogue_path=catalogue,
        download_allowed_hosts=(f"127.0.0.1:{model_server.port}",),
    )
    target = embedded_engine.models_dir / "loras" / "e2e-provisioned-lora.safetensors"
    try:
        out = runner.run(
            {
                "id": "dl",
                "input": {
                    "prompt": "a",
                    "loras": [{"name": "e2e-lora"}],
                    "steps": 2,
                    "width": 64,
                    "height": 64,
                },
            }
        )
        assert isinstance(out, dict) and "error" not in out, out
        assert target.exists(), (out, sorted(p.name for p in target.parent.iterdir()))
        assert target.read_bytes() == lora_bytes
        assert len(model_server.gets("/files/e2e-lora.safetensors")) == 1
        assert out["models"]["loras"][0] == {
            "name": "e2e-provisioned-lora",
            "weight": 0.5,
            "sha256": entry["sha256"],
            "architecture": "sd15",
        }
        assert out["timings_ms"]["provision"] > 0
        assert "<lora:e2e-provisioned-lora:0.5>" in infotext(out["images"][0])
    finally:
        target.unlink(missing_ok=True)
        requests.post(f"{embedded_engine.url}/sdapi/v1/refresh-loras", timeout=30)


def test_engine_warnings_reach_the_job_output(embedded_engine: Any, tmp_path: Path) -> None:
    runner = make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path)
    # A LoRA's ``dyn`` argument (DyLoRA rank) is accepted and reported as not applied by the engine.
    prompt = "a cat <lora:demo-lora-tiny:0.5:0.5:4>"
    out = runner.run({"id": "w", "input": {"prompt": prompt, "steps": 2, "width": 64, "height": 64}})
    assert isinstance(out, dict) and "error" not in out, out
    assert any(w.startswith("engine: ") and "dyn=4" in w for w in out["warnings"]), out["warnings"]


@pytest.mark.parametrize("fixture", ["a1111_client_defaults", "a1111_official_example", "envelope_txt2img"])
def test_other_workers_job_formats_run_on_the_engine(
    embedded_engine: Any, tmp_path: Path, fixture: str
) -> None:
    job_input = job_fixture(fixture)["input"]
    small = {"width": 64, "height": 64, "steps": 2}
    if "payload" in job_input:
        job_input = {**job_input, "payload": {**job_input["payload"], **small}}
    else:
        job_input = {k: v for k, v in job_input.items() if k not in ("num_inference_steps",)} | small
    out = make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path).run(
        {"id": fixture, "input": job_input}
    )
    assert isinstance(out, dict) and "error" not in out, out
    assert len(out["images"]) == 1
    assert isinstance(json.loads(out["info"])["seed"], int)


def test_native_hires_job(embedded_engine: Any, tmp_path: Path) -> None:
    runner = make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path)
    hires = {"scale": 1.5, "upscaler": "latent (nearest)", "steps": 2, "denoising_strength": 0.5}
    out = runner.run(
        {
            "id": "hr",
            "input": {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "hires": hires},
        }
    )
    assert isinstance(out, dict) and "error" not in out, out
    image = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
    assert image.size == (96, 96)
    text = infotext(out["images"][0])
    for fragment in (
        "Denoising strength: 0.5",
        "Hires upscale: 1.5",
        "Hires steps: 2",
        "Hires upscaler: Latent (nearest)",
    ):
        assert fragment in text


def test_the_documented_output_is_what_a_real_job_returns(embedded_engine: Any, tmp_path: Path) -> None:
    """docs/api.md's output example (its fixture) against a real job of the same form on the embedded engine."""
    documented = load_json("outputs/native_full.json")
    job = job_fixture("native_full")["input"]
    job.update(
        checkpoint="demo-sd15-tiny", vae="demo-vae-tiny", loras=[{"name": "demo-lora-tiny", "weight": 1.5}]
    )
    job.update(
        steps=2, width=64, height=64, hires={**job["hires"], "upscaler": "latent (nearest)", "steps": 1}
    )
    out = make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path).run(
        {"id": "doc", "input": job}
    )
    assert isinstance(out, dict) and "error" not in out, out

    assert set(out) == set(documented)
    assert {key: type(value) for key, value in out.items()} == {key: type(v) for key, v in documented.items()}
    assert len(out["images"]) == len(documented["images"]) == len(out["seeds"]) == job["batch_size"]
    assert all(image.startswith("/9j/") for image in out["images"])  # JPEG, like the example
    assert set(documented["parameters"]) <= set(out["parameters"])
    assert set(json.loads(documented["info"])) <= set(json.loads(out["info"]))
    assert all(isinstance(seed, int) for seed in out["seeds"])
    models, documented_models = out["models"], documented["models"]
    assert set(models) == set(documented_models)
    assert set(models["checkpoint"]) == set(documented_models["checkpoint"])
    assert [set(lora) for lora in models["loras"]] == [set(documented_models["loras"][0])]
    assert isinstance(models["vae"], str)
    assert set(out["timings_ms"]) == set(documented["timings_ms"])
    assert all(isinstance(ms, float) for ms in out["timings_ms"].values())
