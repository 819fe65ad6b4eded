"""Every job feature of docs/api.md through the handler, on the real A1111, plus the RunPod local API.

One engine for the module (conftest ``engine``): with ``A1111_DIR`` a fresh A1111 launched by start.sh on
the tiny models, so A1111's own behaviour (the leak) can be asserted too; with ``A1111_URL`` the given one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from tests.a1111.conftest import Engine, info_of
from tests.support.real_a1111 import ROOT, free_port
from worker.handler import JobRunner
from worker.verify import parse_infotext

TINY_JOB: dict[str, Any] = {
    "prompt": "a lighthouse at dusk",
    "steps": 3,
    "width": 64,
    "height": 64,
    "seed": 7,
}


@pytest.fixture(scope="module")
def runner(engine: Engine) -> JobRunner:
    return engine.runner()


def run(runner: JobRunner, job_input: dict[str, Any]) -> Any:
    return runner.run({"id": "a1111-test", "input": job_input})


def counting(runner: JobRunner) -> list[dict[str, Any]]:
    """Record every payload the runner sends to txt2img (the real call still happens)."""
    sent: list[dict[str, Any]] = []
    original: Callable[..., dict[str, Any]] = runner.engine.txt2img

    def txt2img(payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        sent.append(payload)
        return original(payload, timeout_s=timeout_s)

    runner.engine.txt2img = txt2img  # type: ignore[method-assign]
    return sent


def pixels(image_b64: str) -> bytes:
    with Image.open(io.BytesIO(base64.b64decode(image_b64))) as image:
        return image.convert("RGB").tobytes()


def fields(output: dict[str, Any], index: int = 0) -> dict[str, str]:
    return parse_infotext(info_of(output)["infotexts"][index])


# --- first, on the fresh engine: a job never changes later jobs ----------------------------------------


def test_a_job_never_changes_later_jobs(runner: JobRunner, engine: Engine) -> None:
    """docs/decisions.md's "a job never changes later jobs" on the real A1111 (first in the module: it needs
    A1111's fresh state).

    On its own, A1111 keeps an override whose key is not yet in its opts.data (a fresh data dir, or any
    config.json without it), and every override with restore=false: the next plain request inherits clip
    skip, VAE and ENSD with nothing in the response saying so. That plain request is what the worker sent
    before the fix; now every job carries every managed setting.
    """
    names = engine.names
    leaky = {"CLIP_stop_at_last_layers": 2, "sd_vae": names.need("vae")}
    plain = {**TINY_JOB, "sampler_name": "Euler a"}
    runner.engine.txt2img({**plain, "override_settings": leaky}, timeout_s=120)
    leaked = runner.engine.txt2img(plain, timeout_s=120)
    leaked_info = json.loads(leaked["info"])
    if engine.fresh:
        assert leaked_info["clip_skip"] == 2 and leaked_info["sd_vae_name"] == names.vae

    job = run(runner, {**TINY_JOB, "sampler": "Euler a"})
    info = info_of(job)
    assert info["clip_skip"] == 1 and info["sd_vae_name"] is None
    if engine.fresh:
        assert pixels(job["images"][0]) != pixels(leaked["images"][0])

    overrides = {**leaky, "eta_noise_seed_delta": 31337}
    body = {**plain, "override_settings": overrides, "override_settings_restore_afterwards": False}
    restore_false = run(runner, body)
    assert (
        info_of(restore_false)["clip_skip"] == 2 and "ENSD: 31337" in info_of(restore_false)["infotexts"][0]
    )
    assert any("restore_afterwards=false was ignored" in w for w in restore_false["warnings"])
    again = run(runner, {**TINY_JOB, "sampler": "Euler a"})
    info = info_of(again)
    assert info["clip_skip"] == 1 and info["sd_vae_name"] is None and "ENSD" not in info["infotexts"][0]
    assert pixels(again["images"][0]) == pixels(job["images"][0])


# --- native jobs -----------------------------------------------------------------------------------


def test_minimal_native_job(runner: JobRunner, engine: Engine) -> None:
    out = run(runner, {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64})
    info = info_of(out)
    assert len(out["images"]) == 1 and base64.b64decode(out["images"][0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["seeds"] == info["all_seeds"] and len(out["seeds"]) == 1
    assert info["sd_model_name"] == engine.names.checkpoint
    assert out["models"]["checkpoint"]["title"].startswith(engine.names.checkpoint)
    assert info["sampler_name"] == "Euler"  # the worker's explicit default, A1111's API default too
    assert set(out["timings_ms"]) >= {"validate", "preflight", "generate", "verify", "total"}
    assert out["warnings"] == []


def test_full_native_job(runner: JobRunner, engine: Engine) -> None:
    names = engine.names
    job = {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "checkpoint": names.checkpoint,
        "loras": [{"name": names.need("lora"), "weight": 0.7}],
        "vae": names.need("vae"),
        "sampler": "DPM++ 2M Karras",
        "steps": 3,
        "cfg_scale": 6.5,
        "width": 64,
        "height": 64,
        "seed": 1234,
        "batch_size": 2,
        "n_iter": 2,
        "clip_skip": 2,
        "output": {"format": "jpeg", "quality": 80},
    }
    out = run(runner, job)
    info = info_of(out)
    assert out["seeds"] == [1234, 1235, 1236, 1237]
    assert len(out["images"]) == 4
    assert all(base64.b64decode(image)[:3] == b"\xff\xd8\xff" for image in out["images"])
    assert info["clip_skip"] == 2 and info["sampler_name"] == "DPM++ 2M"
    assert info["sd_vae_name"] == names.vae
    text = fields(out)
    assert text["Schedule type"] == "Karras" and text["CFG scale"] == "6.5" and text["Steps"] == "3"
    assert text["Lora hashes"].startswith(f"{names.lora}: ")
    assert out["models"]["loras"][0]["name"] == names.lora and out["models"]["loras"][0]["weight"] == 0.7
    assert out["models"]["vae"] == names.vae


def test_lora_by_alias_and_prompt_tag_and_embedding(runner: JobRunner, engine: Engine) -> None:
    alias = engine.names.need("lora_alias")
    embedding = engine.names.need("embedding")
    out = run(runner, {**TINY_JOB, "prompt": f"a {embedding} lighthouse", "loras": [{"name": alias}]})
    assert f"<lora:{engine.names.lora}:1>" in info_of(out)["prompt"]  # sent as the engine spells it
    text = fields(out)
    assert text["Lora hashes"].startswith(f"{engine.names.lora}: ")
    assert text["TI hashes"].startswith(f"{embedding}: ")
    tagged = run(runner, {**TINY_JOB, "prompt": f"a lighthouse <lora:{engine.names.lora}:0.5>"})
    assert fields(tagged)["Lora hashes"].startswith(f"{engine.names.lora}: ")


def test_schedulers_and_samplers_as_a1111_records_them(runner: JobRunner) -> None:
    for job, sampler, schedule in (
        ({"sampler": "Euler a", "scheduler": "karras"}, "Euler a", "Karras"),
        ({"sampler": "DPM++ 2M"}, "DPM++ 2M", "Karras"),  # Automatic = the sampler's default
        ({"sampler": "k_euler"}, "Euler", "Automatic"),  # an alias A1111 itself would not know
        ({"sampler": "Euler", "scheduler": "Exponential"}, "Euler", "Exponential"),
    ):
        out = run(runner, {**TINY_JOB, **job})
        assert info_of(out)["sampler_name"] == sampler, job
        assert fields(out)["Schedule type"] == schedule, job


def test_hires(runner: JobRunner) -> None:
    out = run(
        runner,
        {**TINY_JOB, "hires": {"scale": 2, "upscaler": "Latent", "steps": 1, "denoising_strength": 0.5}},
    )
    text = fields(out)
    assert text["Hires upscale"] == "2.0" and text["Denoising strength"] == "0.5"
    with Image.open(io.BytesIO(base64.b64decode(out["images"][0]))) as image:
        assert image.size == (128, 128)
    default = run(runner, {**TINY_JOB, "hires": {"scale": 1.5, "upscaler": "Lanczos"}})
    assert any("0.7" in w for w in default["warnings"])
    assert fields(default)["Hires upscaler"] == "Lanczos"


def test_checkpoint_by_hash_then_back_to_the_default(runner: JobRunner, engine: Engine) -> None:
    other = engine.names.need("other_checkpoint")
    switched = run(runner, {**TINY_JOB, "checkpoint": other})
    assert info_of(switched)["sd_model_name"] == other
    short = info_of(switched)["sd_model_hash"]
    if short:
        by_hash = run(runner, {**TINY_JOB, "checkpoint": short})
        assert info_of(by_hash)["sd_model_name"] == other
    back = run(runner, TINY_JOB)
    assert info_of(back)["sd_model_name"] == engine.names.checkpoint


def test_output_formats(runner: JobRunner) -> None:
    png = run(runner, TINY_JOB)
    raw = base64.b64decode(png["images"][0])
    with Image.open(io.BytesIO(raw)) as image:
        assert "Steps: 3" in image.info["parameters"]  # A1111's own PNG, infotext chunk included
    webp = run(runner, {**TINY_JOB, "output": {"format": "webp", "quality": 70}})
    assert base64.b64decode(webp["images"][0])[8:12] == b"WEBP"


def test_progress_is_relayed(engine: Engine) -> None:
    updates: list[dict[str, Any]] = []
    runner = engine.runner(progress_interval_s=0.1)
    runner.progress_sink = lambda job, update: updates.append(update)
    out = run(runner, {**TINY_JOB, "steps": 15})
    assert "error" not in out
    assert updates and all(0 < u["progress"] <= 1 and u["total"] == 15 and u["step"] > 0 for u in updates)


# --- the two peer formats --------------------------------------------------------------------------


def test_plain_a1111_body_with_the_official_workers_names(runner: JobRunner, engine: Engine) -> None:
    body = {
        "prompt": "a photograph of an astronaut riding a horse",
        "num_inference_steps": 3,
        "guidance_scale": 7.5,
        "width": 64,
        "height": 64,
        "seed": 5,
        "sampler_name": "DPM++ 2M Karras",
        "override_settings": {"sd_model_checkpoint": engine.names.checkpoint, "CLIP_stop_at_last_layers": 2},
        "override_settings_restore_afterwards": True,
    }
    out = run(runner, body)
    info = info_of(out)
    assert info["steps"] == 3 and info["cfg_scale"] == 7.5 and info["clip_skip"] == 2
    assert isinstance(out["parameters"], dict) and isinstance(out["info"], str)


def test_envelope_txt2img_and_listings(runner: JobRunner, engine: Engine) -> None:
    out = run(
        runner,
        {
            "api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
            "payload": {**TINY_JOB, "sampler_name": "Euler a"},
        },
    )
    assert info_of(out)["sampler_name"] == "Euler a"
    models = run(runner, {"api": {"method": "GET", "endpoint": "/sdapi/v1/sd-models"}})
    assert isinstance(models, list) and any(m["model_name"] == engine.names.checkpoint for m in models)
    assert run(runner, {"api": {"method": "POST", "endpoint": "refresh-loras"}}) is None
    refused = run(runner, {"api": {"method": "POST", "endpoint": "/sdapi/v1/options"}, "payload": {"x": 1}})
    assert refused["error"].startswith("input_invalid: api.method 'POST' is not allowed for options")


# --- bad input: a clear error, nothing generated -----------------------------------------------------


@pytest.mark.parametrize(
    ("job", "code", "fragment"),
    [
        ({"sampler": "Euler ancestral"}, "input_invalid", "nearest: Euler a"),
        ({"scheduler": "Karras2"}, "input_invalid", "nearest: Karras"),
        ({"checkpoint": "tiny_c"}, "model_not_found", "checkpoint 'tiny_c' not found"),
        ({"prompt": "a <lora:tiny_lora_missing:1>"}, "model_not_found", "LoRA 'tiny_lora_missing' not found"),
        ({"vae": "no_such_vae"}, "model_not_found", "VAE 'no_such_vae' not found"),
        ({"hires": {"upscaler": "4x-Ultra", "denoising_strength": 0.5}}, "input_invalid", "R-ESRGAN 4x+"),
        ({"width": 500}, "input_invalid", "try 496 or 504"),
        ({"stpes": 3}, "input_invalid", "did you mean steps"),
        (
            {"clip_skip": 2, "override_settings": {"CLIP_stop_at_last_layers": 3}},
            "input_invalid",
            "conflicting",
        ),
    ],
)
def test_bad_input_fails_before_generating(
    engine: Engine, job: dict[str, Any], code: str, fragment: str
) -> None:
    runner = engine.runner()
    sent = counting(runner)
    out = run(runner, {**TINY_JOB, **job})
    assert out["error"].startswith(f"{code}: "), out
    assert fragment in out["error"]
    assert "refresh_worker" not in out
    assert sent == []


# --- the engine's report is checked --------------------------------------------------------------------


def test_a_lora_a1111_skips_after_pre_flight_is_an_engine_error(engine: Engine) -> None:
    """A1111 silently ignores a LoRA it cannot find; the worker reads Lora hashes and refuses the result."""
    if engine.models is None:
        pytest.skip("needs the suite's own model folder (A1111_DIR)")
    lora = engine.models / "loras" / f"{engine.names.lora}.safetensors"
    runner = engine.runner()
    runner.engine.catalog()  # pre-flight will see the LoRA...
    hidden = lora.with_suffix(".hidden")
    lora.rename(hidden)  # ...then the file goes away, as on a shared volume
    try:
        out = run(runner, {**TINY_JOB, "loras": [{"name": engine.names.lora, "weight": 1}]})
    finally:
        hidden.rename(lora)
        requests.post(f"{engine.url}/sdapi/v1/refresh-loras", timeout=30)
    assert out["error"].startswith("engine_error: the engine did not generate what the job asked for")
    assert f"LoRA '{engine.names.lora}' was not applied" in out["error"]


def test_an_interrupt_from_outside_cancels_the_job(runner: JobRunner, engine: Engine) -> None:
    """Issue 9 #4 on the real A1111: it answers 200 with a cut-short image, the job must not be COMPLETED."""
    result: dict[str, Any] = {}
    job = threading.Thread(
        target=lambda: result.update(out=run(runner, {**TINY_JOB, "steps": 150, "width": 128, "height": 128}))
    )
    job.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = requests.get(f"{engine.url}/sdapi/v1/progress", timeout=10).json()["state"]
        if state["sampling_step"] >= 2:
            break
        time.sleep(0.1)
    requests.post(f"{engine.url}/sdapi/v1/interrupt", timeout=10)
    job.join(120)
    assert result["out"]["error"].startswith("cancelled: "), result["out"]
    assert "error" not in run(runner, TINY_JOB)  # the flag clears when the next job begins


def test_a_timed_out_job_is_interrupted(engine: Engine) -> None:
    runner = engine.runner(job_timeout_s=1.5)
    out = run(runner, {**TINY_JOB, "steps": 150, "width": 256, "height": 256})
    assert out["error"].startswith("timeout: ") and "interrupted" in out["error"]
    assert "refresh_worker" not in out
    assert "error" not in run(engine.runner(), TINY_JOB)


# --- serverless mode: RunPod's local API in front of the worker ------------------------------------


@pytest.fixture(scope="module")
def serverless(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("serverless")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(
        WORKER_A1111_URL=engine.url,
        WORKER_MODELS_DIR=str(engine.models or tmp / "models"),
        WORKER_READY_TIMEOUT_S="120",
        WORKER_LOG_FORMAT="text",
        PYTHONPATH=str(ROOT),
    )
    log = (tmp / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "--rp_serve_api",
            "--rp_api_host",
            "127.0.0.1",
            "--rp_api_port",
            str(port),
        ],
        env=env,
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker's local API never opened"
            try:
                requests.get(f"{url}/docs", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_serverless_runsync(serverless: str, engine: Engine) -> None:
    done = requests.post(f"{serverless}/runsync", json={"input": {**TINY_JOB, "clip_skip": 2}}, timeout=120)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "COMPLETED", body
    assert json.loads(body["output"]["info"])["clip_skip"] == 2 and len(body["output"]["images"]) == 1
    failed = requests.post(
        f"{serverless}/runsync", json={"input": {**TINY_JOB, "sampler": "nope"}}, timeout=60
    )
    assert failed.json()["status"] == "FAILED"
    assert failed.json()["error"].startswith("input_invalid: sampler 'nope' not found")
