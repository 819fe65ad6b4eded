"""The job input contract: forms, limits, spellings, and errors that name the bad value."""

from __future__ import annotations

import pytest

from tests.support.fixtures import job_fixture, job_names
from worker.errors import InputInvalid
from worker.schema import GenerationRequest, ListingRequest, parse_job_input


def parse(raw: object, max_images: int = 8) -> object:
    return parse_job_input(raw, max_images=max_images)


@pytest.mark.parametrize(
    ("fixture", "form"),
    [
        ("native_minimal", "native"),
        ("native_full", "native"),
        ("a1111_official_example", "a1111"),
        ("a1111_body", "a1111"),
        ("a1111_client_defaults", "a1111"),
        ("envelope_txt2img", "envelope"),
    ],
)
def test_accepted_forms(fixture: str, form: str) -> None:
    request = parse(job_fixture(fixture)["input"])
    assert isinstance(request, GenerationRequest)
    assert request.form == form


def test_every_good_fixture_is_covered() -> None:
    good = [
        name
        for name in job_names()
        if not name.startswith(("bad_", "registry_", "peer_")) and "sd_models" not in name
    ]  # registry and peer fixtures: tests/worker/test_model_jobs.py
    assert set(good) == {
        "native_minimal",
        "native_full",
        "a1111_official_example",
        "a1111_body",
        "a1111_client_defaults",
        "envelope_txt2img",
    }


def test_diffusers_names_fold_into_a1111_fields() -> None:
    request = parse(job_fixture("a1111_official_example")["input"])
    assert isinstance(request, GenerationRequest)
    assert request.job.steps == 25
    assert request.job.cfg_scale == 7.5
    assert request.job.sampler == "DPM++ 2M Karras"


def test_envelope_listing() -> None:
    request = parse(job_fixture("envelope_sd_models")["input"])
    assert request == ListingRequest(endpoint="sd-models")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"prompt": "a", "stpes": 20}, ["unknown field input.stpes", "steps"]),
        ({"prompt": "a", "hires": {"scael": 2}}, ["unknown field input.hires.scael", "scale"]),
        ({"prompt": "a", "output": {"fromat": "png"}}, ["input.output.fromat", "format"]),
        (
            {"prompt": "a", "sampler": "Euler a", "sampler_name": "DDIM"},
            ["conflicting", "sampler_name='DDIM'"],
        ),
        ({"prompt": "a", "steps": 20, "num_inference_steps": 30}, ["conflicting values for steps"]),
        ({"prompt": "a", "steps": 0}, ["input.steps=0", "greater than or equal to 1"]),
        ({"prompt": "a", "steps": 151}, ["input.steps=151", "150"]),
        ({"prompt": "a", "cfg_scale": 31}, ["input.cfg_scale=31"]),
        ({"prompt": "a", "width": 500}, ["input.width=500", "multiple of 8", "496 or 504"]),
        ({"prompt": "a", "height": 4096}, ["input.height=4096", "2048"]),
        ({"prompt": "a", "clip_skip": 13}, ["input.clip_skip=13", "12"]),
        ({"prompt": "a", "seed": -2}, ["input.seed=-2"]),
        ({"prompt": "a", "steps": "many"}, ["input.steps='many'", "integer"]),
        ({"negative_prompt": "x"}, ["input.prompt is required"]),
        ({"prompt": "a", "hires": {"scale": 2}, "enable_hr": True}, ["hires", "enable_hr"]),
        ({"prompt": "a", "output": {"format": "gif"}}, ["input.output.format='gif'", "png", "jpeg", "webp"]),
        ({"prompt": "a", "loras": [{"name": "x", "weight": 11}]}, ["input.loras.0.weight=11"]),
        ("not an object", ["must be a JSON object"]),
    ],
)
def test_bad_input_names_the_value(raw: object, expected: list[str]) -> None:
    with pytest.raises(InputInvalid) as caught:
        parse(raw)
    message = str(caught.value)
    assert message.startswith("input_invalid: ")
    for fragment in expected:
        assert fragment in message


def test_image_cap_names_the_setting() -> None:
    with pytest.raises(InputInvalid, match=r"2\*3 = 6 images exceeds this worker's limit of 4"):
        parse({"prompt": "a", "batch_size": 2, "n_iter": 3}, max_images=4)
    assert isinstance(parse({"prompt": "a", "batch_size": 2, "n_iter": 2}, max_images=4), GenerationRequest)


@pytest.mark.parametrize(
    ("api", "payload", "expected"),
    [
        ({"method": "POST", "endpoint": "/sdapi/v1/options"}, {"x": 1}, "read-only through this worker"),
        ({"method": "GET", "endpoint": "/sdapi/v1/cmd-flags"}, None, "not served by this worker"),
        ({"method": "GET", "endpoint": "txt2img"}, {"prompt": "a"}, "use POST"),
        ({"method": "GET", "endpoint": "refresh-loras"}, None, "use POST"),
        ({"method": "GET", "endpoint": "sd-models"}, {"a": 1}, "takes no payload"),
        ({"method": "GET", "endpoint": "sd-model"}, None, "nearest: sd-models"),
        ({"method": "PUT", "endpoint": "sd-models"}, None, "input.api.method='PUT'"),
    ],
)
def test_envelope_is_an_allowlist_not_a_proxy(api: dict, payload: object, expected: str) -> None:
    raw: dict[str, object] = {"api": api}
    if payload is not None:
        raw["payload"] = payload
    with pytest.raises(InputInvalid, match=expected):
        parse(raw)


@pytest.mark.parametrize("endpoint", ["/sdapi/v1/txt2img", "sdapi/v1/txt2img", "txt2img"])
def test_envelope_endpoint_spellings(endpoint: str) -> None:
    request = parse({"api": {"method": "POST", "endpoint": endpoint}, "payload": {"prompt": "a"}})
    assert isinstance(request, GenerationRequest)


def test_envelope_payload_is_validated_too() -> None:
    with pytest.raises(InputInvalid, match=r"unknown field payload\.guidance"):
        parse({"api": {"method": "POST", "endpoint": "txt2img"}, "payload": {"prompt": "a", "guidance": 7}})
