"""Property test of the embedded engine's HTTP API: no 5xx on any request within its limits.

Requests follow ``POST /sdapi/v1/txt2img``'s schema (``diffusers_server.schemas.Txt2ImgRequest``) with every
field drawn from the engine's own listings, plausible values, hostile names, A1111 prompt syntax and values
of the wrong type. The cost of a generation is kept small (sides up to 128, 1-3 steps, at most 4 images) so
the run stays within about half a minute; everything else spans its full range. Each answer must be a 2xx with
decodable images, or a 4xx in A1111's or FastAPI's error shape: a 5xx is a bug.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffusers_server import options
from diffusers_server.hires import LATENT_UPSCALE_MODES, upscalers_listing
from diffusers_server.samplers import samplers_listing, schedulers_listing
from tests.support.embedded_engine import EmbeddedEngine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]

SAMPLERS = [s["name"] for s in samplers_listing()] + [a for s in samplers_listing() for a in s["aliases"]]
SCHEDULERS = [s["label"] for s in schedulers_listing()] + [s["name"] for s in schedulers_listing()]
UPSCALERS = [u["name"] for u in upscalers_listing()] + list(LATENT_UPSCALE_MODES)
HOSTILE = [
    "../../etc/passwd",
    "/etc/passwd",
    "",
    " ",
    "\x00",
    "nope",
    "a" * 200,
    "demo-sd15-tiny.safetensors\n",
]
WORDS = [
    "a cat",
    "(red:1.3)",
    "((blue))",
    "[dog]",
    "[cat:dog:0.5]",
    "[cat:dog:2]",
    "[cat|dog]",
    "AND",
    "BREAK",
    "<lora:demo-lora-tiny:0.7>",
    "<lora:demo-lora-tiny:te=0.5:unet=1>",
    "<lora:nope:1>",
    "<lora:../../x:1>",
    "<hypernet:x:1>",
    "demo-embedding-tiny",
    "# a comment\n",
    "(unclosed",
    "\\(escaped\\)",
    "(a:1e308)",
]
text = st.one_of(
    st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join),
    st.text(max_size=40),
)
wrong_type = st.one_of(
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers())
)


def name_from(known: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(known), st.sampled_from(known), st.sampled_from(HOSTILE), st.none())


SAFE_OPTIONS = sorted(set(options.DEFAULTS) - {"sd_model_checkpoint"})  # switching models would cost minutes
option_values = st.one_of(
    st.integers(-5, 15),
    st.floats(-2, 2),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["None", "png"]),
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "negative_prompt": text,
    "styles": st.one_of(st.just([]), st.lists(st.text(max_size=5), max_size=2)),
    "seed": st.integers(-(2**64), 2**65),
    "subseed": st.integers(-(2**64), 2**65),
    "subseed_strength": st.sampled_from([0, 0.0, 0.5]),
    "seed_resize_from_h": st.sampled_from([-1, 0, 64]),
    "seed_resize_from_w": st.sampled_from([-1, 0, 64]),
    "sampler_name": name_from(SAMPLERS),
    "scheduler": name_from(SCHEDULERS),
    "batch_size": st.integers(-1, 2),
    "n_iter": st.integers(-1, 2),
    "steps": st.integers(-1, 3),
    "cfg_scale": st.floats(-10, 30),
    "width": st.sampled_from([8, 16, 64, 72, 128, 0, 65, 8192]),
    "height": st.sampled_from([8, 16, 64, 72, 128, 0, 65, 8192]),
    "restore_faces": st.booleans(),
    "tiling": st.booleans(),
    "eta": st.floats(0, 2),
    "denoising_strength": st.floats(-1, 2),
    "s_min_uncond": st.floats(-1, 2),
    "s_churn": st.sampled_from([0.0, 0.5]),
    "s_noise": st.floats(0, 2),
    "override_settings": st.dictionaries(
        st.sampled_from([*SAFE_OPTIONS, "no_such_option"]), option_values, max_size=3
    ),
    "disable_extra_networks": st.booleans(),
    "comments": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    "enable_hr": st.booleans(),
    "hr_scale": st.floats(0, 2),
    "hr_upscaler": name_from(UPSCALERS),
    "hr_second_pass_steps": st.integers(-1, 3),
    "hr_resize_x": st.sampled_from([0, 64, 128, -8]),
    "hr_resize_y": st.sampled_from([0, 64, 128, -8]),
    "hr_checkpoint_name": name_from(["Use same checkpoint", "demo-sd15-tiny"]),
    "hr_sampler_name": name_from(["Use same sampler", *SAMPLERS]),
    "hr_scheduler": name_from(["Use same scheduler", *SCHEDULERS]),
    "hr_prompt": text,
    "hr_negative_prompt": text,
    "script_name": st.sampled_from([None, "", "x/y/z plot"]),
    "script_args": st.just([]),
    "send_images": st.booleans(),
    "save_images": st.booleans(),
    "alwayson_scripts": st.one_of(st.just({}), st.dictionaries(st.text(max_size=4), st.just({}), max_size=1)),
    "refiner_checkpoint": st.sampled_from([None, "", "None", "demo-sd15-tiny"]),
}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": draw(text), "width": 64, "height": 64, "steps": 2}
    for field in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=8, unique=True)):
        body[field] = draw(FIELDS[field])
    if draw(st.integers(0, 9)) == 0:  # a value of the wrong type: FastAPI's 422
        body[draw(st.sampled_from(sorted(FIELDS)))] = draw(wrong_type)
    return body


@pytest.fixture(scope="module")
def engine_api(embedded_engine: EmbeddedEngine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embedded_engine.url + "/sdapi/v1", timeout=120) as client:
        yield client


def _check_images(body: dict[str, Any], sent: dict[str, Any]) -> None:
    info = json.loads(body["info"])
    if sent.get("send_images") is False:
        assert body["images"] == []
        return
    assert len(body["images"]) == len(info["infotexts"]) >= 1
    for image in body["images"]:
        Image.open(io.BytesIO(base64.b64decode(image))).verify()


@settings(
    max_examples=45,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(sent=requests())
def test_no_request_within_the_limits_gets_a_5xx(engine_api: httpx.Client, sent: dict[str, Any]) -> None:
    response = engine_api.post(
        "/txt2img", content=json.dumps(sent), headers={"Content-Type": "application/json"}
    )
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, (sent, response.text[:2000])
    body = response.json()
    if response.status_code == 200:
        _check_images(body, sent)
    elif response.status_code == 422 and isinstance(body.get("detail"), list):
        assert all({"loc", "msg"} <= problem.keys() for problem in body["detail"])
    else:
        assert set(body) == {"error", "detail", "body", "errors"} and body["detail"], body
