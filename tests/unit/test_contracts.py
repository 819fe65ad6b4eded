"""One definition per contract, and every user of it agrees: A1111's txt2img fields, the health report,
base64 redaction, URL credential stripping."""

from __future__ import annotations

import base64
import logging
import os
import types
from typing import Any

import pytest
from a1111_worker_routes import a1111_health
from a1111_worker_routes.report import HEALTH_STATUSES, QUEUE_KEYS, REPORT_KEYS, VRAM_KEYS, health_report

from diffusers_server.schemas import Txt2ImgRequest
from tests.support.a1111_behaviour import parameter_defaults, transcript
from tests.support.fake_a1111 import FakeA1111, a1111_error_body, dead_pid, write_pid_file
from worker.a1111.client import A1111Client
from worker.a1111.txt2img_fields import TXT2IMG_FIELDS
from worker.errors import DownloadFailed, EngineFailed
from worker.health import probe_client, probe_embedded
from worker.logs import RedactingFilter
from worker.output.bucket_config import bucket_endpoint
from worker.redaction import public_url, redact_base64
from worker.registry.download import Downloader, DownloadRequest
from worker.schema import GenerationRequest, Txt2ImgJob, parse_job_input

#: fields of the job schema that A1111's txt2img does not have (the native form and its other spellings)
NATIVE_ONLY = {
    "checkpoint",
    "loras",
    "vae",
    "sampler",
    "clip_skip",
    "hires",
    "output",
    "num_inference_steps",
    "guidance_scale",
    "controlnet",
    "adetailer",
}


# --- A1111's txt2img fields ------------------------------------------------------------------------


def recorded_parameters() -> tuple[dict[str, Any], dict[str, Any]]:
    """A1111's ``parameters`` echo of the recorded ``minimal`` request, and that request's body."""
    minimal = next(e for e in transcript("exchanges") if e["name"] == "minimal")
    return minimal["response"]["parameters"], minimal["body"]


def test_the_field_list_is_what_the_real_a1111_echoes() -> None:
    echoed, sent = recorded_parameters()
    assert list(TXT2IMG_FIELDS) == list(echoed)  # names and A1111's order
    unsent = {name: value for name, value in echoed.items() if name not in sent}
    assert unsent == {name: TXT2IMG_FIELDS[name] for name in unsent}  # API defaults as A1111 applies them


def test_the_job_schema_accepts_every_a1111_field() -> None:
    assert set(Txt2ImgJob.model_fields) - NATIVE_ONLY == set(TXT2IMG_FIELDS)
    body = {**TXT2IMG_FIELDS, "prompt": "a lighthouse"}  # a plain A1111 body, every field at its default
    request = parse_job_input(body, max_images=8)
    assert isinstance(request, GenerationRequest) and request.form == "a1111"


def test_the_embedded_engine_takes_the_same_fields_and_defaults() -> None:
    fields = Txt2ImgRequest.model_fields
    assert list(fields) == list(TXT2IMG_FIELDS)
    assert {
        name: field.get_default(call_default_factory=True) for name, field in fields.items()
    } == TXT2IMG_FIELDS


def test_the_fake_a1111_echoes_the_same_defaults(fake_a1111: FakeA1111) -> None:
    assert parameter_defaults() == TXT2IMG_FIELDS
    with A1111Client(fake_a1111.url) as client:
        echoed = client.txt2img(
            {"prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64}, timeout_s=10
        )
    assert list(echoed["parameters"]) == list(TXT2IMG_FIELDS)


# --- the health report ------------------------------------------------------------------------------


def assert_report_shape(report: dict[str, Any]) -> None:
    assert tuple(report) == REPORT_KEYS
    assert report["status"] in HEALTH_STATUSES
    assert report["queue"] is None or tuple(report["queue"]) == QUEUE_KEYS
    assert report["vram"] is None or tuple(report["vram"]) == VRAM_KEYS


STATE = types.SimpleNamespace(job="txt2img", job_count=1, sampling_step=3, sampling_steps=20)


def test_every_probe_answers_the_one_report_shape(fake_a1111: FakeA1111, tmp_path: Any) -> None:
    reports = [
        a1111_health(
            model=None, loading=True, checkpoints_known=1, selected="a", state=STATE, seconds_since_start=1
        ),
        probe_embedded(types.SimpleNamespace(model=None, load_error=None, state=STATE)),
        probe_embedded(types.SimpleNamespace(model=object(), model_info=None, options={}, state=None)),
    ]
    with A1111Client(fake_a1111.url) as client:
        reports.append(probe_client(client))
    with A1111Client(fake_a1111.url, pid_file=write_pid_file(tmp_path / "e.pid", dead_pid())) as dead:
        reports.append(probe_client(dead))
    for report in reports:
        assert_report_shape(report)
    assert [r["status"] for r in reports] == ["loading", "loading", "ready", "ready", "failed"]
    # the same state reads the same queue on the extension's side and the worker's
    assert reports[0]["queue"] == reports[1]["queue"] == {"running": True, "step": 3, "steps": 20}


def test_the_report_refuses_a_status_outside_the_contract() -> None:
    with pytest.raises(ValueError, match="ready"):
        health_report("warming")  # type: ignore[arg-type]


# --- base64 redaction and credentials in URLs ---------------------------------------------------------


def test_logs_and_engine_errors_redact_base64_alike(fake_a1111: FakeA1111) -> None:
    blob = base64.b64encode(os.urandom(600)).decode()
    fake_a1111.set_fault("txt2img", status=500, body=a1111_error_body("ValueError", f"bad image {blob}"))
    with A1111Client(fake_a1111.url) as client, pytest.raises(EngineFailed) as info:
        client.txt2img({"prompt": "a"}, timeout_s=10)
    marker = redact_base64(blob)
    assert marker == f"<{len(blob)} chars of base64>"
    assert marker in info.value.message
    record = logging.LogRecord("w", logging.INFO, __file__, 1, f"image {blob}", None, None)
    RedactingFilter().filter(record)
    assert record.getMessage() == f"image {marker}"


@pytest.mark.parametrize(
    ("url", "public"),
    [
        ("http://user:pw@127.0.0.1:3000/sdapi", "http://127.0.0.1:3000/sdapi"),
        ("https://host/path/file.safetensors?X-Amz-Signature=abc#frag", "https://host/path/file.safetensors"),
        ("http://user:p%40ss@[::1]:9/x", "http://[::1]:9/x"),
        ("https://plain.example.com", "https://plain.example.com"),
    ],
)
def test_public_url(url: str, public: str) -> None:
    assert public_url(url) == public


def test_every_user_strips_credentials_from_urls(tmp_path: Any) -> None:
    secret = "hunter2-secret"
    engine = A1111Client(f"http://bob:{secret}@127.0.0.1:9", connect_timeout_s=0.2)
    with pytest.raises(Exception) as engine_error:
        engine.call_listing("samplers")
    assert secret not in str(engine_error.value) and "127.0.0.1:9" in str(engine_error.value)
    assert secret not in bucket_endpoint(f"https://key:{secret}@s3.example.com", "b")
    downloader = Downloader(allowed_hosts=("models.example.com",), max_bytes=1024, timeout_s=1, attempts=1)
    url = f"http://eve:{secret}@127.0.0.1:9/model.safetensors?token={secret}"
    with pytest.raises(DownloadFailed) as download_error:
        downloader.fetch(DownloadRequest(url=url, dest_dir=tmp_path, key="m"))
    assert str(download_error.value).endswith(
        "host of http://127.0.0.1:9/model.safetensors is not in WORKER_DOWNLOAD_ALLOWED_HOSTS"
    )
