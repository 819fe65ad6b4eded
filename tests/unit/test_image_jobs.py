"""The image kinds' job contract and translation, table-driven over the fixtures docs/api.md shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import FIXTURES, StaticEngineLists, engine_catalog, load_json
from worker.errors import InputInvalid
from worker.image_jobs import ImageToolRequest, Img2ImgJob, parse_any_job
from worker.preflight.resolver import Preflight
from worker.schema import GenerationRequest, ListingRequest
from worker.settings_baseline import SettingsBaseline
from worker.translate_img2img import build_img2img_payload

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
IMAGE_FIXTURES = FIXTURES / "jobs" / "images"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = load_json(f"jobs/images/{name}.json")["input"]
    return data


def parse(raw: Any) -> Any:
    return parse_any_job(raw, max_images=8)


def translate(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    request = parse(raw)
    assert isinstance(request, GenerationRequest) and isinstance(request.job, Img2ImgJob)
    catalog = engine_catalog()
    names = Preflight(StaticEngineLists(catalog)).resolve(request.job).names
    baseline = SettingsBaseline({"sd_model_checkpoint": catalog.current_checkpoint, "sd_vae": "Automatic"})
    translation = build_img2img_payload(request.job, names, baseline.defaults())
    return translation.payload, translation.warnings


def test_every_image_fixture_is_in_the_docs() -> None:
    documented = set(re.findall(r"<!-- fixture: (jobs/images/[\w.-]+) -->", API_DOC.read_text("utf-8")))
    assert {f"jobs/images/{p.name}" for p in IMAGE_FIXTURES.glob("*.json")} <= documented


@pytest.mark.parametrize(
    ("name", "form"),
    [
        ("img2img_native", "native"),
        ("inpaint_native", "native"),
        ("img2img_a1111_body", "a1111"),
        ("envelope_img2img", "envelope"),
    ],
)
def test_img2img_forms(name: str, form: str) -> None:
    request = parse(fixture(name))
    assert isinstance(request, GenerationRequest) and isinstance(request.job, Img2ImgJob)
    assert request.form == form


@pytest.mark.parametrize(
    ("name", "endpoint", "body_subset"),
    [
        (
            "upscale_native",
            "extra-single-image",
            {"upscaler_1": "R-ESRGAN 4x+", "resize_mode": 0, "upscaling_resize": 4},
        ),
        ("envelope_extras", "extra-single-image", {"upscaler_1": "Lanczos", "upscaling_resize_w": 1024}),
        ("png_info_native", "png-info", {}),
        ("envelope_interrogate", "interrogate", {"model": "deepdanbooru"}),
    ],
)
def test_image_tool_forms(name: str, endpoint: str, body_subset: dict[str, Any]) -> None:
    request = parse(fixture(name))
    assert isinstance(request, ImageToolRequest)
    assert request.endpoint == endpoint
    assert body_subset.items() <= request.body.items()
    assert "image" in request.body


def test_native_upscale_of_several_images_is_a_batch() -> None:
    request = parse({"upscale": {"images": ["a", "b"], "upscaler": "Nearest", "width": 128, "height": 64}})
    assert isinstance(request, ImageToolRequest) and request.endpoint == "extra-batch-images"
    assert request.body == {
        "upscaler_1": "Nearest",
        "resize_mode": 1,
        "upscaling_resize_w": 128,
        "upscaling_resize_h": 64,
        "imageList": [{"data": "a", "name": "image-0"}, {"data": "b", "name": "image-1"}],
    }


def test_txt2img_and_listings_still_parse() -> None:
    assert isinstance(parse({"prompt": "a"}), GenerationRequest)
    assert parse({"api": {"method": "GET", "endpoint": "/sdapi/v1/upscalers"}}) == ListingRequest("upscalers")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"init_images": []}, "input.init_images=[]: List should have at least 1 item"),
        ({"init_images": ["a"], "hires": {"scale": 2}}, "hires: txt2img fields; img2img has no hires pass"),
        ({"init_images": ["a"], "enable_hr": True}, "enable_hr: txt2img fields"),
        (
            {"init_images": ["a"], "inpainting_fill": "blur"},
            "must be 0-3 or one of fill, original, latent noise",
        ),
        ({"init_images": ["a"], "inpainting_fill": 4}, "less than or equal to 3"),
        ({"init_images": ["a"], "resize_mode": 4}, "input.resize_mode=4"),
        ({"init_images": ["a"], "denoising_strength": 1.5}, "input.denoising_strength=1.5"),
        ({"init_images": ["a"], "latent_mask": "b"}, "latent_mask is not accepted"),
        ({"init_images": ["a"], "mask_blurr": 4}, "unknown field input.mask_blurr; did you mean mask_blur"),
        ({"init_images": ["a", "b", "c"], "batch_size": 2}, "3 init_images with batch_size=2"),
        (
            {"init_images": ["a"] * 3, "n_iter": 3},
            "9 images (init images or batch_size, times n_iter) exceeds",
        ),
        ({"api": {"endpoint": "/sdapi/v1/img2img", "method": "GET"}, "payload": {}}, "use POST"),
        ({"api": {"endpoint": "img2img"}, "payload": {"prompt": "a"}}, "payload.init_images is required"),
        (
            {"api": {"endpoint": "extra-single-image"}, "payload": {"image": "a", "upscaler_3": "x"}},
            "unknown field payload.upscaler_3",
        ),
        (
            {"api": {"endpoint": "extra-single-image"}, "payload": {"image": "a", "resize_mode": 2}},
            "payload.resize_mode=2",
        ),
        (
            {"api": {"endpoint": "interrogate"}, "payload": {"image": "a", "model": "blip"}},
            "valid: clip, deepdanbooru",
        ),
        ({"api": {"endpoint": "extra-batch-images"}, "payload": {"imageList": []}}, "payload.imageList=[]"),
        ({"upscale": {"image": "a", "images": ["b"]}}, "give image (one) or images (several)"),
        ({"upscale": {"image": "a", "scale": 2, "width": 64, "height": 64}}, "give scale or width/height"),
        (
            {"upscale": {"image": "a"}, "png_info": {"image": "a"}},
            "give one of upscale, png_info, interrogate",
        ),
        ({"api": {"endpoint": "extras"}}, "allowed: txt2img, img2img, extra-single-image"),
        ({"upscale": {"images": ["a"] * 9}}, "9 images exceed this worker's limit of 8 per job"),
    ],
)
def test_refusals(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(InputInvalid) as caught:
        parse(raw)
    assert expected in caught.value.message


@pytest.mark.parametrize(
    ("raw", "subset", "absent", "warning"),
    [
        (
            fixture("img2img_native"),
            {"denoising_strength": 0.45, "resize_mode": 1, "sampler_name": "Euler a"},
            ["mask"],
            None,
        ),
        (
            fixture("inpaint_native"),
            {"inpainting_fill": 2, "mask_blur": 8, "inpaint_full_res_padding": 32},
            [],
            None,
        ),
        (
            fixture("img2img_a1111_body"),
            {"inpainting_fill": 1, "scheduler": "Karras", "mask_blur_x": 4},
            [],
            None,
        ),
        ({"init_images": ["a", "b"]}, {"batch_size": 2}, [], None),
        (
            {"init_images": ["a", "b"], "batch_size": 4},
            {"batch_size": 2},
            [],
            "A1111 makes one image per init",
        ),
        (
            {"init_images": ["a"], "inpainting_fill": "original"},
            {"inpainting_fill": 1},
            [],
            "only apply with a mask",
        ),
        (
            {"init_images": ["a"], "inpainting_mask_invert": True, "mask": "m"},
            {"inpainting_mask_invert": 1},
            [],
            None,
        ),
        (
            {"init_images": ["a"]},
            {"prompt": "", "save_images": False, "send_images": True},
            ["denoising_strength", "batch_size"],
            None,
        ),
    ],
)
def test_translation(
    raw: dict[str, Any], subset: dict[str, Any], absent: list[str], warning: str | None
) -> None:
    payload, warnings = translate(raw)
    assert subset.items() <= payload.items()
    assert not set(absent) & payload.keys()
    assert "hires" not in payload and "enable_hr" not in payload
    assert payload["override_settings_restore_afterwards"] is True
    if warning is None:
        assert warnings == []
    else:
        assert any(warning in w for w in warnings), warnings


def test_the_images_pass_through_as_given() -> None:
    raw = fixture("inpaint_native")
    payload, _ = translate(raw)
    assert payload["init_images"] == raw["init_images"]  # the data-URI prefix goes at the image check
    assert payload["mask"] == raw["mask"]


def test_the_peer_example_resolves_its_names() -> None:
    payload, _ = translate(fixture("envelope_img2img")["payload"])
    assert payload["sampler_name"] == "DPM++ SDE"
    assert payload["scheduler"] == "Karras"
    assert payload["override_settings"]["sd_model_checkpoint"] == "Deliberate_v6.safetensors [9aba26abdf]"
    assert payload["restore_faces"] is True
