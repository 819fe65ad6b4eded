"""The embedded engine's ``/img2img``, ``/extra-*`` and what they refuse (pixels: test_img2img_parity.py)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from diffusers_server import image_ops
from diffusers_server.img2img_fields import IMG2IMG_FIELDS
from diffusers_server.schemas import TXT2IMG_ONLY_FIELDS, Img2ImgRequest
from scripts import a1111_img2img_cells as cells
from tests.engine.conftest import SMALL, png

PHOTO = cells.png_base64(cells.inputs()["in-photo-64x64.png"])
MASK = cells.png_base64(cells.inputs()["in-mask-rect-64x64.png"])
IMG2IMG = {**SMALL, "init_images": [PHOTO], "denoising_strength": 0.5, "seed": 5}


def img2img(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post("/img2img", json={**IMG2IMG, **fields})


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    if "info" in body:
        body["info"] = json.loads(body["info"])
    return body


def test_the_request_has_a1111s_img2img_fields_and_defaults() -> None:
    fields = Img2ImgRequest.model_fields
    defaults = {n: f.get_default(call_default_factory=True) for n, f in fields.items()}
    assert {n: v for n, v in defaults.items() if n not in TXT2IMG_ONLY_FIELDS} == IMG2IMG_FIELDS
    # A1111 ignores a txt2img-only key sent to img2img; so does the engine (no hires pass)
    assert Img2ImgRequest(enable_hr=True, hr_scale=4).enable_hr is False


def test_img2img_answers_in_a1111s_shape(client: httpx.Client) -> None:
    body = ok(img2img(client, batch_size=2))
    assert len(body["images"]) == 2 and png(body["images"][0]).size == (64, 64)
    # A1111 leaves the images out of the echo unless include_init_images, and has no hires fields
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None
    assert list(body["parameters"]) == list(IMG2IMG_FIELDS) and body["parameters"]["resize_mode"] == 0
    info = body["info"]
    assert info["denoising_strength"] == 0.5 and info["all_seeds"] == [5, 6]
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    assert info["extra_generation_params"]["Denoising strength"] == 0.5


def test_img2img_is_deterministic_per_previous_request_and_seed(client: httpx.Client) -> None:
    def run() -> bytes:
        ok(client.post("/txt2img", json={**cells.PRIMER}))
        return png(ok(img2img(client))["images"][0]).tobytes()

    assert run() == run()


def test_sdxl_img2img_and_inpainting(client: httpx.Client) -> None:
    """SDXL runs the same path (its size conditioning at the processing size); pixels not pinned (no small
    SDXL model loads in A1111 here)."""
    sdxl = {"override_settings": {"sd_model_checkpoint": "demo-sdxl-tiny"}, "width": 64, "height": 80}
    body = ok(img2img(client, **sdxl, mask=MASK, inpainting_fill=2, inpaint_full_res=False))
    assert png(body["images"][0]).size == (64, 80) and body["info"]["sd_model_name"] == "demo-sdxl-tiny"
    assert "Masked content: latent noise" in body["info"]["infotexts"][0]


def test_inpainting_keeps_the_unmasked_pixels(client: httpx.Client) -> None:
    body = ok(img2img(client, mask=MASK, inpaint_full_res=False, inpainting_fill=1, mask_blur=0))
    result = png(body["images"][0]).convert("RGB")
    original = cells.inputs()["in-photo-64x64.png"]
    # outside the mask (16..40 x 20..44) the original is pasted back exactly; inside it is repainted
    assert result.crop((0, 0, 64, 16)).tobytes() == original.crop((0, 0, 64, 16)).tobytes()
    assert result.crop((20, 24, 36, 40)).tobytes() != original.crop((20, 24, 36, 40)).tobytes()
    text = body["info"]["infotexts"][0]
    assert "Masked content" not in text and "Mask blur" not in text  # fill 1 and blur 0 add no key


def test_inpainting_infotext_has_a1111s_keys_in_order(client: httpx.Client) -> None:
    body = ok(img2img(client, mask=MASK, inpainting_mask_invert=1, inpaint_full_res_padding=8))
    text = body["info"]["infotexts"][0]
    keys = ["Denoising strength: 0.5", "Mask mode: Inpaint not masked", "Mask blur: 4",
            "Inpaint area: Only masked", "Masked area padding: 8", "Masked content: fill"]  # fmt: skip
    positions = [text.index(key) for key in keys]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("fields", "status", "named"),
    [
        ({"init_images": None}, 404, "Init image not found"),
        ({"init_images": []}, 400, "init_images"),
        ({"init_images": [PHOTO, PHOTO, PHOTO]}, 400, "init_images"),
        ({"init_images": ["not base64!"]}, 400, "init_images[0]"),
        ({"init_images": ["https://example.com/a.png"]}, 400, "init_images[0]"),
        ({"mask": base64.b64encode(b"GIF89a truncated").decode()}, 400, "mask"),
        ({"resize_mode": 4}, 400, "resize_mode"),
        ({"inpainting_fill": 4, "mask": MASK}, 400, "inpainting_fill"),
        ({"denoising_strength": 1.5}, 400, "denoising_strength"),
        ({"denoising_strength": None}, 400, "denoising_strength"),
        ({"mask_blur": 1000, "mask": MASK}, 400, "mask_blur_x"),
        ({"mask_blur_y": -1, "mask": MASK}, 400, "mask_blur_y"),
        ({"latent_mask": MASK}, 400, "latent_mask"),
        ({"resize_mode": 3, "mask": MASK}, 400, "resize_mode 3"),
        ({"initial_noise_multiplier": -1}, 400, "initial_noise_multiplier"),
        ({"override_settings": {"sd_vae_encode_method": "TAESD"}}, 400, "sd_vae_encode_method"),
        ({"override_settings": {"img2img_color_correction": True}}, 400, "img2img_color_correction"),
    ],
)
def test_what_the_engine_cannot_do_is_refused_naming_the_field(
    client: httpx.Client, fields: dict[str, Any], status: int, named: str
) -> None:
    response = img2img(client, **fields)
    assert response.status_code == status, response.text
    assert named in response.json()["detail"]


def test_a_decompression_bomb_is_refused_from_its_header(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")  # ~3 KB of PNG, 25 megapixels
    response = img2img(client, init_images=[base64.b64encode(buffer.getvalue()).decode()])
    assert response.status_code == 400 and "pixels" in response.json()["detail"]


def test_a_data_uri_and_an_rgba_image_are_accepted(client: httpx.Client) -> None:
    rgba = cells.png_base64(cells.inputs()["in-alpha-64x64.png"])
    assert ok(img2img(client, init_images=[f"data:image/png;base64,{rgba}"]))["images"]


def extras(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post("/extra-single-image", json={"image": PHOTO, **fields})


def test_extras_upscale_by_a_factor_and_to_a_size(client: httpx.Client) -> None:
    body = ok(extras(client, upscaler_1="Lanczos", upscaling_resize=2))
    assert png(body["image"]).size == (128, 128)
    assert "Postprocess upscale by: 2" in body["html_info"] and "Lanczos" in body["html_info"]
    sized = ok(
        extras(client, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=60)
    )
    assert png(sized["image"]).size == (100, 60)
    unchanged = ok(extras(client, upscaler_1="None"))
    assert png(unchanged["image"]).tobytes() == cells.inputs()["in-photo-64x64.png"].tobytes()


def test_extras_batch_returns_one_image_per_file(client: httpx.Client) -> None:
    files = [{"data": PHOTO, "name": "a.png"}, {"data": PHOTO, "name": "b.png"}]
    body = ok(client.post("/extra-batch-images", json={"imageList": files, "upscaler_1": "Nearest"}))
    assert [png(b).size for b in body["images"]] == [(128, 128), (128, 128)]


@pytest.mark.parametrize(
    ("fields", "status", "named"),
    [
        ({"upscaler_1": "R-ESRGAN 4x+"}, 404, "upscaler_1"),
        ({"upscaler_1": "Lanczos", "upscaler_2": "SwinIR"}, 404, "upscaler_2"),
        ({"gfpgan_visibility": 0.5}, 400, "gfpgan_visibility"),
        ({"upscaler_1": "Lanczos", "upscaling_resize": 100}, 400, "upscaling_resize"),
        ({"image": ""}, 400, "image"),
    ],
)
def test_extras_refusals_name_the_field(
    client: httpx.Client, fields: dict[str, Any], status: int, named: str
) -> None:
    response = extras(client, **fields)
    assert response.status_code == status, response.text
    assert named in response.json()["detail"]


def test_mask_blur_is_opencvs_bit_for_bit() -> None:
    """A1111 blurs masks with cv2.GaussianBlur (fixed point for 8 bits); outputs recorded from its OpenCV."""
    recorded = json.loads((Path(__file__).parents[1] / "fixtures" / "a1111_mask_blur.json").read_text())
    for case in recorded["cases"]:
        source = np.array(recorded["inputs"][case["input"]], dtype=np.uint8)
        blurred = image_ops.blur_mask(Image.fromarray(source), case["sigma_x"], case["sigma_y"])
        assert np.asarray(blurred).tolist() == case["output"], case
