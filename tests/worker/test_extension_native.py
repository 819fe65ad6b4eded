"""The native ``controlnet``/``adetailer`` form and the control images, end to end over real HTTP: the worker in
front of the fake A1111 serving what the real extensions listed (tests/fixtures/a1111/extensions.json).

The native units reach A1111 as the extensions' own ``alwayson_scripts``, go through the same pre-flight and
post-check as a raw entry, and are refused naming ``controlnet[i].field``; every ControlNet image (native or
raw) is checked like an init image before anything is sent; the request's images echoed in ``parameters``
come back as placeholders.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from tests.support import input_images as ti
from tests.support.fake_a1111 import FakeA1111
from tests.support.fixtures import load_json
from tests.support.model_server import ModelServer, model_server
from tests.worker.test_image_jobs import run, sent

__all__ = ["model_server"]  # the fixture

RECORDED = load_json("a1111/extensions.json")
LISTINGS: dict[str, Any] = RECORDED["listings"]
DISC = RECORDED["meta"]["control_image"]
#: what a real volume would hold besides the recorded random models (the names the docs' examples use)
VOLUME_CONTROLNETS = ["control_v11p_sd15_canny [d14c016b]", "control_v11p_sd15_lineart [43d4be0d]"]
VOLUME_DETECTORS = ["face_yolov8n.pt"]


@pytest.fixture
def fake(fake_a1111: FakeA1111) -> FakeA1111:
    fake_a1111.data.scripts = LISTINGS["/sdapi/v1/scripts"]
    routes = {path: body for path, body in LISTINGS.items() if not path.startswith("/sdapi/")}
    routes["/controlnet/model_list"] = {
        "model_list": routes["/controlnet/model_list"]["model_list"] + VOLUME_CONTROLNETS
    }
    routes["/adetailer/v1/ad_model"] = {
        "ad_model": routes["/adetailer/v1/ad_model"]["ad_model"] + VOLUME_DETECTORS
    }
    fake_a1111.data.extension_routes = routes
    return fake_a1111


def fixture(name: str) -> dict[str, Any]:
    job: dict[str, Any] = load_json(f"jobs/extensions/{name}.json")["input"]
    return job


def test_native_txt2img_with_two_controlnet_units_and_adetailer(fake: FakeA1111) -> None:
    out = run(fake, fixture("txt2img_controlnet_adetailer"))
    assert "error" not in out, out
    assert len(out["images"]) == 3  # the image, then ControlNet's two detected maps
    (payload,) = sent(fake, "txt2img")
    assert payload["alwayson_scripts"] == {
        "controlnet": {
            "args": [
                {
                    "enabled": True,
                    "module": "canny",
                    "model": "control_v11p_sd15_canny",
                    "image": DISC,
                    "weight": 0.8,
                    "processor_res": 512,
                    "threshold_a": 100.0,
                    "threshold_b": 200.0,
                    "control_mode": "Balanced",
                },
                {
                    "enabled": True,
                    "module": "invert",
                    "model": "control_v11p_sd15_lineart",
                    "image": DISC,
                    "weight": 0.5,
                    "resize_mode": "Crop and Resize",
                    "guidance_end": 0.8,
                    "control_mode": "My prompt is more important",
                },
            ]
        },
        "ADetailer": {
            "args": [
                True,
                False,
                {
                    "ad_model": "face_yolov8n.pt",
                    "ad_prompt": "detailed face",
                    "ad_confidence": 0.3,
                    "ad_mask_k": 1,
                    "ad_denoising_strength": 0.4,
                    "ad_steps": 20,
                    "ad_use_steps": True,
                },
                {"ad_model": "None"},
                {"ad_model": "None"},
                {"ad_model": "None"},
            ]
        },
    }
    assert "controlnet" not in payload and "adetailer" not in payload  # only A1111's own fields


def test_native_img2img_unit_without_its_own_image(fake: FakeA1111) -> None:
    out = run(fake, fixture("img2img_controlnet"))
    assert "error" not in out, out
    (payload,) = sent(fake, "img2img")
    assert payload["alwayson_scripts"]["controlnet"]["args"] == [
        {
            "enabled": True,
            "module": "canny",
            "model": "control_v11p_sd15_canny",
            "control_mode": "ControlNet is more important",
        }
    ]


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "both forms",
        fixture("bad_both_forms"),
        "input_invalid: controlnet and alwayson_scripts.ControlNet both give controlnet units",
    ),
    (
        "bad control_mode",
        fixture("bad_control_mode"),
        "input_invalid: input.controlnet.0.control_mode='Loud'",
    ),
    (
        "unknown detector",
        fixture("bad_adetailer_model"),
        "model_not_found: adetailer[0].model: ADetailer model 'face_yolov9.pt' not found; nearest: face_yolov8n.pt",
    ),
    (
        "unknown preprocessor",
        {
            "controlnet": [
                {"model": "control_v11p_sd15_canny", "image": DISC},
                {"module": "cany", "model": "control_v11p_sd15_canny", "image": DISC},
            ]
        },
        "input_invalid: controlnet[1].module: ControlNet preprocessor 'cany' not found; nearest: canny",
    ),
    (
        "unknown model",
        {"controlnet": [{"module": "canny", "model": "control_v11p_sd15_cany", "image": DISC}]},
        "model_not_found: controlnet[0].model: ControlNet model 'control_v11p_sd15_cany' not found; "
        "nearest: control_v11p_sd15_canny [d14c016b]",
    ),
    (
        "txt2img without a control image",
        {"controlnet": [{"module": "canny", "model": "control_v11p_sd15_canny"}]},
        "input_invalid: controlnet[0].image: a txt2img ControlNet unit needs a control image",
    ),
]


@pytest.mark.parametrize(("case", "job", "message"), REFUSED, ids=[case for case, *_ in REFUSED])
def test_native_units_are_refused_naming_them(
    fake: FakeA1111, case: str, job: dict[str, Any], message: str
) -> None:
    out = run(fake, {"prompt": "a portrait", **job})
    assert out["error"].startswith(message), out
    assert sent(fake, "txt2img") == []


# --- control images: hostile until proven otherwise ---------------------------------------------

GIF = ti.b64(ti.other_format_bytes("GIF"))
TRUNCATED = ti.b64(ti.png_bytes(32, 32)[:-30])
BOMB = ti.b64(ti.bomb_png())
GRAY16 = ti.b64(ti.png16_gray_bytes())
GOOD = ti.png_b64(32, 32)


def cn_unit(**fields: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "canny", "model": "control_rand_sd15", "image": GOOD, **fields}


def raw(*units: dict[str, Any]) -> dict[str, Any]:
    return {"alwayson_scripts": {"controlnet": {"args": list(units)}}}


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    (
        "native GIF",
        {"controlnet": [{"model": "control_rand_sd15", "image": GIF}]},
        "controlnet[0].image: a GIF image",
    ),
    (
        "native truncated mask",
        {"controlnet": [{"model": "control_rand_sd15", "image": GOOD, "mask": TRUNCATED}]},
        "controlnet[0].mask: a truncated or corrupt PNG",
    ),
    (
        "native not base64",
        {"controlnet": [{"model": "control_rand_sd15", "image": "/etc/passwd"}]},
        "controlnet[0].image: not base64",
    ),
    ("raw bomb", raw(cn_unit(image=BOMB)), "alwayson_scripts.controlnet.args[0].image: declares"),
    (
        "raw 16-bit gray",
        raw(cn_unit(), cn_unit(image=GRAY16)),
        "alwayson_scripts.controlnet.args[1].image: a 16-bit grayscale",
    ),
    (
        "raw input_image",
        raw(cn_unit(image=None, input_image=GIF)),
        "alwayson_scripts.controlnet.args[0].input_image: a GIF",
    ),
    (
        "raw mask_image",
        raw(cn_unit(mask_image=TRUNCATED)),
        "alwayson_scripts.controlnet.args[0].mask_image: a truncated",
    ),
    (
        "raw image and mask dict",
        raw(cn_unit(image={"image": GOOD, "mask": GIF})),
        "alwayson_scripts.controlnet.args[0].image.mask: a GIF image",
    ),
    (
        "raw dict without its image",
        raw(cn_unit(image={"mask": GOOD})),
        'args[0].image: ControlNet needs its "image"',
    ),
    (
        "raw [image, mask]",
        raw(cn_unit(image=[GOOD, TRUNCATED])),
        "alwayson_scripts.controlnet.args[0].image[1]: a truncated",
    ),
    (
        "raw list of dicts",
        raw(cn_unit(image=[{"image": GOOD}, {"image": GIF}])),
        "args[0].image[1].image: a GIF",
    ),
    ("raw three images", raw(cn_unit(image=[GOOD, GOOD, GOOD])), "args[0].image: a list of 3 values"),
    (
        "raw number",
        raw(cn_unit(image=7)),
        "args[0].image: an image must be a base64 string or an https URL, got int",
    ),
    (
        "a disabled unit's images are checked too",
        raw(cn_unit(enabled=False, image=GIF)),
        "alwayson_scripts.controlnet.args[0].image: a GIF",
    ),
    (
        "a URL while URLs are off",
        raw(cn_unit(image="https://example.com/x.png")),
        "image URLs are off on this worker",
    ),
    (
        "ipadapter_input, which ControlNet unpickles",
        raw(cn_unit(enabled=False, ipadapter_input="gASVAAAAAAAAAAA=")),
        "alwayson_scripts.controlnet.args[0].ipadapter_input: ControlNet loads it with torch.load",
    ),
]


@pytest.mark.parametrize(("case", "job", "message"), HOSTILE, ids=[case for case, *_ in HOSTILE])
def test_hostile_control_images_fail_before_the_engine_sees_anything(
    fake: FakeA1111, case: str, job: dict[str, Any], message: str
) -> None:
    out = run(fake, {"prompt": "a portrait", **job})
    assert out["error"].startswith("input_invalid: "), out
    assert message in out["error"], out["error"]
    assert out["error"].endswith("nothing was generated")
    assert fake.requests == [], "nothing may reach the engine, not even a listing"


def test_control_images_as_data_uris_and_urls_reach_a1111_as_checked_base64(
    fake: FakeA1111, model_server: ModelServer
) -> None:
    model_server.add("/disc.png", base64.b64decode(DISC))
    host = model_server.url.removeprefix("http://")
    job = {
        "prompt": "a portrait",
        "controlnet": [
            {"module": "canny", "model": "control_rand_sd15", "image": "data:image/png;base64," + GOOD},
            {
                "module": "invert",
                "model": "control_rand_sd15",
                "image": model_server.url + "/disc.png",
                "mask": GOOD,
            },
        ],
    }
    out = run(fake, job, allow_image_urls=True, download_allowed_hosts=host)
    assert "error" not in out, out
    (payload,) = sent(fake, "txt2img")
    first, second = payload["alwayson_scripts"]["controlnet"]["args"]
    assert first["image"] == GOOD  # the prefix dropped, the bytes untouched
    assert (second["image"], second["mask"]) == (DISC, GOOD)  # fetched by the worker, never by A1111


# --- the echo of the request's images -----------------------------------------------------------


def test_the_echoed_control_images_come_back_as_placeholders(fake: FakeA1111) -> None:
    image = ti.png_b64(256, 256)
    out = run(
        fake,
        {"prompt": "a portrait", **raw(cn_unit(image=image), cn_unit(image={"image": image, "mask": GOOD}))},
    )
    assert "error" not in out, out
    units = out["parameters"]["alwayson_scripts"]["controlnet"]["args"]
    digest = hashlib.sha256(image.encode()).hexdigest()[:12]
    assert units[0]["image"] == f"<png image: {len(image) / 1000:.1f} kB of base64, sha256 {digest}>"
    assert units[1]["image"]["image"] == units[0]["image"]
    assert units[1]["image"]["mask"].startswith("<png image: ")
    assert units[0]["module"] == "canny" and units[0]["enabled"] is True  # the rest as A1111 echoed it
    assert image not in json.dumps(out)
    (payload,) = sent(fake, "txt2img")
    assert payload["alwayson_scripts"]["controlnet"]["args"][0]["image"] == image  # A1111 got the image
    assert out["images"] and out["images"][0] != units[0]["image"]  # the generated images untouched
