"""Registry jobs and converted LoRAs on the real A1111: a pulled file is listed by A1111 at once (the job
rescans its folder), and a PEFT LoRA copied in after A1111 started and named in a prompt tag is converted and
applied under its converted name.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np
import pytest
import requests
from safetensors.numpy import load_file, save_file

from tests.a1111.conftest import Engine, info_of
from tests.support.model_server import ModelServer, model_server  # noqa: F401  (fixture)
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry import ModelRegistry
from worker.registry.jobs import RegistryJobs
from worker.registry.pipeline_configs import CONFIG_METADATA_KEY, REAL_CONFIGS
from worker.settings import WorkerSettings

TINY_JOB: dict[str, Any] = {"steps": 3, "width": 64, "height": 64, "seed": 5, "sampler": "Euler"}
#: the tiny checkpoints' UNet (scripts/a1111_test_models.py) in diffusers' terms: SD1.5's blocks, narrower
TINY_UNET = {
    **REAL_CONFIGS["sd15"]["unet"],
    "block_out_channels": [32, 64, 128, 128],
    "cross_attention_dim": 32,
}
#: PEFT modules of that UNet: (module, input features, output features)
PEFT_MODULES = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 32, 32),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 32, 32),
    ("mid_block.attentions.0.transformer_blocks.0.attn1.to_q", 128, 128),
]


def job_runner(engine: Engine, server: ModelServer) -> JobRunner:
    if engine.models is None:
        pytest.skip("needs the suite's own A1111 (A1111_DIR): the test writes to its models folder")
    settings = WorkerSettings.model_validate(
        {
            "a1111_url": engine.url,
            "models_dir": engine.models,
            "job_timeout_s": 120,
            "allow_model_jobs": True,
            "download_allowed_hosts": f"127.0.0.1:{server.port}",
        }
    )
    registry = ModelRegistry.from_settings(settings)
    return JobRunner(
        settings,
        A1111Client(engine.url, request_timeout_s=60),
        provider=registry,
        model_jobs=RegistryJobs(registry, engine="a1111"),
    )


def a1111_loras(engine: Engine) -> list[str]:
    return [item["name"] for item in requests.get(f"{engine.url}/sdapi/v1/loras", timeout=30).json()]


def test_a_pulled_lora_is_listed_by_a1111_without_a_restart(
    engine: Engine,
    model_server: ModelServer,  # noqa: F811
) -> None:
    runner = job_runner(engine, model_server)
    assert engine.models is not None
    body = (engine.models / "loras" / f"{engine.names.need('lora')}.safetensors").read_bytes()
    model_server.add("/files/pulled_lora.safetensors", body)
    assert "pulled_lora" not in a1111_loras(engine)
    out = runner.run(
        {
            "id": "pull",
            "input": {
                "registry": {
                    "action": "pull",
                    "ref": f"{model_server.url}/files/pulled_lora.safetensors",
                    "kind": "lora",
                }
            },
        }
    )
    assert isinstance(out, dict) and "error" not in out, out
    assert out["refreshed"] == ["loras"]
    assert "pulled_lora" in a1111_loras(engine)  # A1111 rescanned: no restart, no later miss needed


def test_a_peft_lora_in_a_prompt_tag_is_converted_and_applied_under_its_engine_name(
    engine: Engine,
    model_server: ModelServer,  # noqa: F811
) -> None:
    runner = job_runner(engine, model_server)
    models = engine.models
    assert models is not None
    # a checkpoint that records its diffusers configs, so the converter can check the LoRA against it
    tiny = models / "checkpoints" / f"{engine.names.checkpoint}.safetensors"
    base = models / "checkpoints" / "tiny_peft_base.safetensors"
    save_file(
        load_file(str(tiny)), str(base), metadata={CONFIG_METADATA_KEY: json.dumps({"unet": TINY_UNET})}
    )
    shutil.copy(tiny.with_suffix(".yaml"), base.with_suffix(".yaml"))
    rng = np.random.default_rng(3)
    peft = {}
    for module, fan_in, fan_out in PEFT_MODULES:
        peft[f"{module}.lora_A.weight"] = rng.standard_normal((2, fan_in)).astype(np.float32)
        peft[f"{module}.lora_B.weight"] = rng.standard_normal((fan_out, 2)).astype(np.float32)
    save_file(peft, str(models / "loras" / "peft_style.safetensors"))  # after A1111 listed its LoRAs

    job = {**TINY_JOB, "prompt": "a lighthouse <lora:peft_style:1>", "checkpoint": "tiny_peft_base"}
    out = runner.run({"id": "peft-tag", "input": job})
    info = info_of(out)
    assert (models / "loras" / "peft_style-kohya.safetensors").is_file()
    assert "<lora:peft_style-kohya:1>" in out["parameters"]["prompt"]
    assert (
        "prompt tag <lora:peft_style:…> sent as <lora:peft_style-kohya:…>, the converted file's name as the "
        "engine lists it" in out["warnings"]
    )
    assert "peft_style-kohya" in info["infotexts"][0]  # A1111 applied it (its "Lora hashes")
    plain = runner.run({"id": "plain", "input": {**job, "prompt": "a lighthouse"}})
    assert info_of(plain) and plain["images"][0] != out["images"][0]
