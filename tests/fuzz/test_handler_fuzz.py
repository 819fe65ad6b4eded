"""Bounded fuzzing of the job schema through the real handler.

Hypothesis builds jobs in every accepted form, with hostile names in every model field, junk of every JSON
type in every number field, NaN/Infinity, huge integers, unknown fields and envelope endpoint tricks. They run
through ``JobRunner.run`` with the real registry (a tmp volume, downloads pointed at a closed loopback port)
against a fault-free fake A1111 over real HTTP, with every secret the worker knows configured. Every result
must be an image or a known error code, never the catch-all for a worker bug, never a traceback, never a
secret (in the output or in the logs). The examples are derandomized and capped so CI stays fast.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.registry.fixtures import write_model
from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.errors import ErrorCode
from worker.handler import JobRunner
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry
from worker.schema import Txt2ImgJob
from worker.settings import WorkerSettings

pytestmark = pytest.mark.timeout(120)

SECRETS = {
    "a1111_auth": "fuzzuser:a1111-pass-S3CRET",
    "civitai_token": "civitai-tok-S3CRET",
    "hf_token": "hf_tok_S3CRET",
    "bucket_access_key_id": "AKIAFUZZS3CRET",
    "bucket_secret_access_key": "bucket-key-S3CRET",
}
SECRET_VALUES = [value.split(":")[-1] for value in SECRETS.values()]
CODES = "|".join(code.value for code in ErrorCode)
ERROR = re.compile(rf"^({CODES}): \S")

KNOWN = [
    "demo.safetensors",
    "sdxl/base_xl.safetensors",
    "detail_tweaker",
    "add_detail",
    "pixel_art",
    "Euler a",
]
HOSTILE = [
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\boot.ini",
    "checkpoints/../../x",
    "~/.ssh/id_rsa",
    "C:\\x.safetensors",
    "%2e%2e%2fx",
    "civitai:1",
    "civitai:1@2",
    "civitai:x",
    "hf:owner/repo/../../x.safetensors",
    "owner/repo/file.safetensors",
    "x [0123456789]",
    "0123456789",
    "ab" * 32,
    "demo.safetensors\n",
    "\x00",
    " ",
    "",
    "a" * 300,
    "local-lora",
    "<lora:x:1>",
]
names = st.one_of(st.sampled_from(KNOWN + HOSTILE), st.text(max_size=30))
junk = st.one_of(
    st.sampled_from([10**5000, -(10**400), 2**64]),  # integers Python will not even print
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
PROMPTS = [
    "a cat <lora:detail_tweaker:0.6>",
    "a cat <lora:../../etc/passwd:1>",
    "a cat <lora:nope>",
    "<lora:add_detail:te=0.5:unet=1>",
    "((a:1.3)) [b:c:0.5] AND d BREAK e",
]
prompts = st.one_of(st.text(max_size=80), st.sampled_from([*PROMPTS, "x" * 25_000]))


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values (so jobs get past validation and reach the engine), one in ten junk."""
    return st.integers(0, 9).flatmap(lambda roll: junk if roll == 0 else good)


NATIVE: dict[str, st.SearchStrategy[Any]] = {
    "negative_prompt": maybe(st.text(max_size=40)),
    "checkpoint": maybe(names),
    "vae": maybe(st.one_of(names, st.sampled_from(["Automatic", "None", "sdxl_vae.safetensors"]))),
    "loras": maybe(
        st.lists(
            st.fixed_dictionaries({"name": maybe(names)}, optional={"weight": maybe(st.floats(-20, 20))}),
            max_size=3,
        )
    ),
    "sampler": maybe(st.one_of(names, st.sampled_from(["DPM++ 2M Karras", "Euler a", "euler a karras"]))),
    "scheduler": maybe(st.one_of(names, st.sampled_from(["Karras", "karras", "Automatic"]))),
    "steps": maybe(st.integers(1, 150) | st.integers(-5, 200)),
    "cfg_scale": maybe(st.floats(1, 30) | st.floats(-5, 40)),
    "width": maybe(st.sampled_from([64, 64, 72, 512, 63, 4096])),
    "height": maybe(st.sampled_from([64, 64, 72, 512, 0, 4096])),
    "seed": maybe(st.integers(-(2**70), 2**70)),
    "batch_size": maybe(st.integers(1, 4) | st.integers(-1, 10)),
    "n_iter": maybe(st.integers(1, 2) | st.integers(-1, 10)),
    "clip_skip": maybe(st.integers(1, 12) | st.integers(-1, 14)),
    "hires": maybe(
        st.fixed_dictionaries(
            {},
            optional={
                "scale": maybe(st.floats(0, 5)),
                "upscaler": maybe(names),
                "steps": maybe(st.integers(-1, 200)),
                "denoising_strength": maybe(st.floats(-1, 2)),
                "checkpoint": maybe(names),
            },
        )
    ),
    "output": maybe(
        st.fixed_dictionaries(
            {},
            optional={
                "format": maybe(st.sampled_from(["png", "jpeg", "webp", "gif"])),
                "quality": maybe(st.integers(-1, 120)),
                "delivery": maybe(st.sampled_from(["auto", "inline", "url", "s3"])),
            },
        )
    ),
}
A1111_ONLY = [name for name in Txt2ImgJob.model_fields if name not in NATIVE and name != "prompt"]


@st.composite
def job_inputs(draw: st.DrawFn) -> Any:
    form = draw(
        st.sampled_from(["native", "native", "native", "a1111", "a1111", "envelope", "listing", "junk"])
    )
    if form == "junk":
        return draw(junk)
    body: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # a missing prompt now and then
        body["prompt"] = draw(maybe(prompts))
    for field in draw(st.lists(st.sampled_from(sorted(NATIVE)), max_size=6, unique=True)):
        body[field] = draw(NATIVE[field])
    if form in ("a1111", "envelope"):
        for field in draw(st.lists(st.sampled_from(A1111_ONLY), max_size=4, unique=True)):
            body[field] = draw(junk)
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(min_size=1, max_size=20))] = draw(junk)  # an unknown field
    if form in ("native", "a1111"):
        return body
    endpoint = draw(
        st.sampled_from(
            [
                "txt2img",
                "/sdapi/v1/txt2img",
                "sd-models",
                "/sdapi/v1/loras",
                "options",
                "cmd-flags",
                "../options",
                "sdapi/v1/../v1/options",
                "refresh-loras",
                "interrupt",
                "server-kill",
                "progress?skip_current_image=false",
                "http://evil.example/sd-models",
            ]
        )
    )
    api = {"method": draw(maybe(st.sampled_from(["GET", "POST", "get", "DELETE"]))), "endpoint": endpoint}
    return {"api": draw(maybe(st.just(api))), "payload": draw(st.one_of(st.just(body), junk))}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def fuzz_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobRunner]:
    fake = FakeA1111(png_size=16)
    fake.auth = ("fuzzuser", "a1111-pass-S3CRET")
    fake.start()
    models = tmp_path_factory.mktemp("fuzz") / "models"
    write_model(models, "checkpoint-sd15", "demo.safetensors")
    write_model(models, "lora-sd15", "detail_tweaker.safetensors")
    write_model(models, "lora-sdxl", "local-lora.safetensors")
    (models / "vae").mkdir(parents=True, exist_ok=True)
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    registry = ModelRegistry(
        models_dir=models,
        registry_path=models / "registry.json",
        catalogue=Catalogue(),
        allowed_hosts=("127.0.0.1",),
        civitai_api_base=nowhere + "/api/v1",
        hf_base=nowhere + "/hf",
        civitai_token=SECRETS["civitai_token"],
        hf_token=SECRETS["hf_token"],
        timeout_s=1.0,
        attempts=1,
    )
    registry.warm()
    settings_ = WorkerSettings.model_validate(
        {"a1111_url": fake.url, "job_timeout_s": 10, "models_dir": str(models), **SECRETS}
    )
    engine = A1111Client.from_settings(settings_)
    try:
        yield JobRunner(settings_, engine, provider=registry)
    finally:
        engine.close()
        fake.stop()


@settings(
    max_examples=250,
    deadline=None,  # the first examples pay for connections and imports
    derandomize=True,  # the same examples on every run: CI stays deterministic and bounded
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(job_input=job_inputs())
def test_every_job_ends_in_an_image_or_a_known_error(
    fuzz_runner: JobRunner, job_input: Any, caplog: pytest.LogCaptureFixture
) -> None:
    run_and_check(fuzz_runner, job_input, caplog)


def run_and_check(runner: JobRunner, job_input: Any, caplog: pytest.LogCaptureFixture) -> None:
    """One job through the handler: an image or a known error code, no traceback, no secret anywhere."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        out = runner.run({"id": "fuzz", "input": job_input})
    text = json.dumps(out, default=str)
    event(out["error"].split(":", 1)[0] if isinstance(out, dict) and "error" in out else type(out).__name__)
    for secret in SECRET_VALUES:
        assert secret not in text and secret not in caplog.text, secret
    assert "Traceback" not in text
    if isinstance(out, dict) and "error" in out:
        assert ERROR.match(out["error"]), out["error"]
        assert "unexpected worker failure" not in out["error"], (job_input, caplog.text[-2000:])
        # the fake engine is healthy and answers every valid request: engine-side codes mean the worker
        # sent something it should have refused (e.g. a NaN it could not even serialise)
        assert not out["error"].startswith(("engine_unavailable", "engine_error", "out_of_memory")), out
        assert len(out["error"]) < 4_000, "an error quotes at most short excerpts"
    elif isinstance(out, dict) and "images" in out:
        assert all(isinstance(image, str) and image for image in out["images"])
    else:  # a listing passed through from the engine
        assert isinstance(out, (dict, list))


@st.composite
def named_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """Schema-valid jobs whose every model, sampler and upscaler name may be hostile: pre-flight and registry."""
    text_names = st.one_of(st.sampled_from(KNOWN + HOSTILE), st.text(min_size=1, max_size=30)).filter(
        lambda name: name.strip() != ""
    )
    job: dict[str, Any] = {
        "prompt": draw(st.one_of(st.text(max_size=80), st.sampled_from(PROMPTS))),
        "steps": 2,
    }
    for field in draw(st.lists(st.sampled_from(["checkpoint", "vae", "sampler", "scheduler"]), unique=True)):
        job[field] = draw(text_names)
    loras = draw(st.lists(text_names.filter(lambda n: len(n) <= 255), max_size=2))
    job["loras"] = [{"name": name} for name in loras]
    if draw(st.booleans()):
        job["hires"] = {
            "upscaler": draw(text_names),
            "checkpoint": draw(text_names),
            "denoising_strength": 0.5,
        }
    return job


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(job_input=named_jobs())
def test_hostile_names_end_in_an_image_or_a_known_error(
    fuzz_runner: JobRunner, job_input: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    run_and_check(fuzz_runner, job_input, caplog)


def test_the_secrets_are_really_configured(fuzz_runner: JobRunner) -> None:
    """Guard for the test above: it only proves something if the runner holds every secret."""
    values = fuzz_runner.settings.model_dump()
    for field in SECRETS:
        assert values[field] is not None, field
    assert isinstance(fuzz_runner.provider, ModelRegistry)
    assert Path(fuzz_runner.settings.models_dir).is_dir()
