"""The handler end to end over real HTTP against the fault-injecting fake A1111.

The same jobs run against the real embedded engine in tests/e2e/; here the engine misbehaves on
purpose, and the tests check that the job fails with the right code, sends nothing it should not,
and that the output keeps A1111's keys and types.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.fake_a1111 import OOM_BODY, FakeA1111, validation_body
from tests.support.fixtures import job_fixture
from tests.support.s3_server import S3Endpoint
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.output.bucket_config import uploader_from_settings
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def make_runner(fake: FakeA1111, sink: Any = None, **overrides: Any) -> JobRunner:
    fields: dict[str, Any] = {"a1111_url": fake.url, "progress_interval_s": 0.05, "job_timeout_s": 5}
    settings = WorkerSettings.model_validate({**fields, **overrides})
    engine = A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5)
    return JobRunner(settings, engine, progress_sink=sink)


def run(fake: FakeA1111, job_input: dict[str, Any], **overrides: Any) -> Any:
    return make_runner(fake, **overrides).run({"id": "job-1", "input": job_input})


def sent_txt2img(fake: FakeA1111) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests_to("txt2img", "POST")]


def test_native_job_output_keeps_a1111_keys_and_types(fake_a1111: FakeA1111) -> None:
    out = run(
        fake_a1111,
        {
            "prompt": "a cat",
            "checkpoint": "sdxl/base_xl.safetensors",
            "loras": [{"name": "add_detail", "weight": 0.6}],
            "sampler": "DPM++ 2M Karras",
            "clip_skip": 2,
            "seed": 100,
            "batch_size": 2,
            "width": 64,
            "height": 64,
        },
    )
    assert "error" not in out, out
    assert isinstance(out["images"], list) and len(out["images"]) == 2
    assert all(isinstance(image, str) for image in out["images"])
    assert isinstance(out["parameters"], dict)
    assert isinstance(out["info"], str) and json.loads(out["info"])["all_seeds"] == [100, 101]
    assert out["seeds"] == [100, 101]
    assert out["models"]["checkpoint"]["title"].startswith("sdxl/base_xl.safetensors")
    assert out["models"]["loras"] == [
        {"name": "detail_tweaker", "weight": 0.6, "sha256": None, "architecture": None}
    ]
    assert set(out["timings_ms"]) >= {"validate", "preflight", "provision", "generate", "encode", "total"}
    assert isinstance(out["warnings"], list)

    (payload,) = sent_txt2img(fake_a1111)
    assert payload["sampler_name"] == "DPM++ 2M"
    assert payload["scheduler"] == "Karras"
    assert payload["prompt"] == "a cat <lora:detail_tweaker:0.6>"
    assert payload["override_settings"]["CLIP_stop_at_last_layers"] == 2
    assert payload["override_settings"]["sd_model_checkpoint"] == out["models"]["checkpoint"]["title"]
    assert payload["save_images"] is False and payload["send_images"] is True


def test_images_pass_through_untouched(fake_a1111: FakeA1111) -> None:
    out = run(fake_a1111, {"prompt": "a", "width": 64, "height": 64})
    response = make_runner(fake_a1111).engine.txt2img({"prompt": "a", "width": 64, "height": 64}, timeout_s=5)
    assert out["images"] == response["images"]  # the fake's PNG is deterministic: same bytes back


@pytest.mark.parametrize(
    ("job_input", "code", "fragment"),
    [
        ({"prompt": "a", "sampler": "Euler ancestral"}, "input_invalid", "nearest: Euler a"),
        ({"prompt": "a", "checkpoint": "demo2"}, "model_not_found", "demo.safetensors"),
        ({"prompt": "a <lora:detail_tweeker:1>"}, "model_not_found", "detail_tweaker"),
        ({"prompt": "a", "vae": "vae-ft-ema"}, "model_not_found", "vae-ft-mse-840000-ema-pruned"),
        ({"prompt": "a", "stpes": 3}, "input_invalid", "did you mean steps"),
        ({"prompt": "a", "hires": {"upscaler": "4x-Ultra"}}, "input_invalid", "R-ESRGAN 4x+"),
    ],
)
def test_bad_names_fail_before_generating(
    fake_a1111: FakeA1111, job_input: dict[str, Any], code: str, fragment: str
) -> None:
    out = run(fake_a1111, job_input)
    assert out["error"].startswith(f"{code}: ")
    assert fragment in out["error"]
    assert "refresh_worker" not in out  # a user mistake never restarts the worker
    assert sent_txt2img(fake_a1111) == []


def test_checkpoint_miss_refreshes_the_engine_once_then_finds_a_new_file(fake_a1111: FakeA1111) -> None:
    runner = make_runner(fake_a1111)
    runner.engine.catalog()  # cached before the file "arrives"
    fake_a1111.data.checkpoints.append(
        {
            "title": "fresh.safetensors",
            "model_name": "fresh",
            "hash": None,
            "sha256": None,
            "filename": "/models/Stable-diffusion/fresh.safetensors",
            "config": None,
        }
    )
    out = runner.run({"id": "j", "input": {"prompt": "a", "checkpoint": "fresh"}})
    assert "error" not in out, out
    assert len(fake_a1111.requests_to("refresh-checkpoints", "POST")) == 1
    assert sent_txt2img(fake_a1111)[0]["override_settings"]["sd_model_checkpoint"] == "fresh.safetensors"


def test_silent_checkpoint_fallback_is_caught(fake_a1111: FakeA1111) -> None:
    runner = make_runner(fake_a1111)
    runner.engine.catalog()
    # The file vanishes after pre-flight: A1111 would quietly use its current checkpoint instead.
    fake_a1111.data.checkpoints = [c for c in fake_a1111.data.checkpoints if "base_xl" not in c["title"]]
    out = runner.run({"id": "j", "input": {"prompt": "a", "checkpoint": "base_xl"}})
    assert out["error"].startswith("engine_error: ")
    assert "'demo' instead of the requested 'base_xl'" in out["error"]


@pytest.mark.parametrize(
    ("fault", "code", "refresh"),
    [
        ({"status": 500, "body": OOM_BODY}, "out_of_memory", True),
        ({"status": 422, "body": validation_body("steps")}, "input_invalid", False),
        (
            {"status": 500, "body": {"error": "TypeError", "detail": "", "body": "", "errors": "boom"}},
            "engine_error",
            False,
        ),
        ({"drop": True}, "engine_unavailable", True),
        ({"close": True}, "engine_unavailable", True),
        ({"hang": 8}, "timeout", False),
    ],
)
def test_engine_faults_map_to_codes(
    fake_a1111: FakeA1111, fault: dict[str, Any], code: str, refresh: bool
) -> None:
    fake_a1111.set_fault("txt2img", **fault)
    out = run(fake_a1111, {"prompt": "a"}, job_timeout_s=1.5)
    assert out["error"].startswith(f"{code}: "), out
    assert out.get("refresh_worker", False) is refresh
    assert "Traceback" not in out["error"]
    # The POST is never retried once the engine answered part of it. A kept-alive connection closed without
    # a single response byte looks like a stale one: retried once on a fresh connection (worker/a1111/transport.py).
    assert len(sent_txt2img(fake_a1111)) == (2 if fault.get("close") else 1)
    if code == "timeout":
        assert fake_a1111.requests_to("interrupt", "POST"), "a timed-out job must interrupt the engine"


def test_progress_is_relayed_while_generating(fake_a1111: FakeA1111) -> None:
    updates: list[dict[str, Any]] = []
    fake_a1111.txt2img_delay = 0.6
    runner = make_runner(fake_a1111, sink=lambda job, update: updates.append(update))
    out = runner.run({"id": "j", "input": {"prompt": "a"}})
    assert "error" not in out
    assert updates, "no progress update was sent"
    assert updates[0] == {"progress": 0.5, "step": 10, "total": 20, "eta_s": 1.5}


def test_envelope_listing_returns_the_engine_json(fake_a1111: FakeA1111) -> None:
    out = run(fake_a1111, job_fixture("envelope_sd_models")["input"])
    assert isinstance(out, list)
    assert [m["title"] for m in out] == [c["title"] for c in fake_a1111.data.checkpoints]
    assert sent_txt2img(fake_a1111) == []


def test_envelope_txt2img(fake_a1111: FakeA1111) -> None:
    out = run(fake_a1111, job_fixture("envelope_txt2img")["input"])
    assert "error" not in out, out
    assert out["seeds"] == [7]


def cli(fake: FakeA1111, job_input: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WORKER_A1111_URL": fake.url,
        "WORKER_MODELS_DIR": str(tmp_path / "models"),
        "WORKER_READY_TIMEOUT_S": "10",
        "WORKER_LOG_FORMAT": "text",
        "CIVITAI_TOKEN": "civitai-secret-token-123",
    }
    return subprocess.run(
        [sys.executable, "-m", "worker", "--test_input", json.dumps({"input": job_input})],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_m_worker_test_input(fake_a1111: FakeA1111, tmp_path: Path) -> None:
    result = cli(fake_a1111, {"prompt": "a cat", "sampler": "Euler a", "width": 64, "height": 64}, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = result.stdout + result.stderr
    assert "engine ready" in logs
    assert "civitai-secret-token-123" not in logs
    # the warm-up ran before the job, then the job itself
    assert len(sent_txt2img(fake_a1111)) == 2


def test_python_m_worker_exits_non_zero_on_a_bad_job(fake_a1111: FakeA1111, tmp_path: Path) -> None:
    result = cli(fake_a1111, {"prompt": "a cat", "sampler": "nope"}, tmp_path)
    assert result.returncode != 0
    assert "input_invalid" in result.stdout + result.stderr


def test_python_m_worker_exits_when_the_engine_never_answers(tmp_path: Path) -> None:
    fake = FakeA1111().start()
    url = fake.url
    fake.stop()  # nothing listens on that port any more
    env = {
        **os.environ,
        "WORKER_A1111_URL": url,
        "WORKER_READY_TIMEOUT_S": "2",
        "WORKER_MODELS_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "worker", "--test_input", json.dumps({"input": {"prompt": "a"}})],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "engine never became ready" in result.stdout + result.stderr


def test_delivery_url_without_a_bucket_fails_before_generating(fake_a1111: FakeA1111) -> None:
    out = run(fake_a1111, {"prompt": "a", "output": {"delivery": "url"}})
    assert out["error"].startswith("input_invalid: ")
    assert "BUCKET_ENDPOINT_URL" in out["error"]
    assert sent_txt2img(fake_a1111) == []


def test_jpeg_output_is_converted(fake_a1111: FakeA1111) -> None:
    out = run(fake_a1111, {"prompt": "a", "width": 64, "height": 64, "output": {"format": "jpeg"}})
    assert "error" not in out, out
    assert base64.b64decode(out["images"][0])[:3] == b"\xff\xd8\xff"


def test_large_output_is_uploaded_to_s3(fake_a1111: FakeA1111, s3_server: S3Endpoint) -> None:
    settings = WorkerSettings(
        a1111_url=fake_a1111.url,
        output_max_bytes=4096,
        bucket_endpoint_url=s3_server.endpoint_url,
        bucket_access_key_id=s3_server.access_key_id,
        bucket_secret_access_key=s3_server.secret_access_key,
        bucket_name=s3_server.bucket,
    )
    engine = A1111Client(fake_a1111.url, connect_timeout_s=1, request_timeout_s=5)
    runner = JobRunner(settings, engine, uploader=uploader_from_settings(settings))
    out = runner.run({"id": "job-s3", "input": {"prompt": "a", "batch_size": 2, "width": 64, "height": 64}})
    assert "error" not in out, out
    assert out["images"] == []
    assert len(out["image_urls"]) == 2
    fetched = requests.get(out["image_urls"][0], timeout=10)
    assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("upload" in w for w in out["warnings"])


def test_large_output_without_a_bucket_is_output_too_large(fake_a1111: FakeA1111) -> None:
    out = run(fake_a1111, {"prompt": "a", "width": 64, "height": 64}, output_max_bytes=2048)
    assert out["error"].startswith("output_too_large: ")
    assert "2,048-byte limit" in out["error"]
