"""Inpainting (9-channel) and instruct-pix2pix (8-channel) checkpoints in the embedded engine.

The tiny demo SD1.5 widened by scripts/make_inpainting_checkpoint.py (the same script writes the full-size
checkpoints whose A1111 parity docs/engine.md reports): img2img with and without a mask and txt2img run with
A1111's image conditioning; what the engine cannot do is refused naming the field or the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from diffusers_server.demo_models import SD15_NAME, make_demo_models
from scripts import a1111_img2img_cells as cells
from scripts.make_inpainting_checkpoint import widen
from tests.engine.conftest import SMALL, png
from tests.support.embedded_engine import run_engine
from worker.registry.detect import UNET_CONV_IN
from worker.registry.safetensors_header import read_header

INPAINTING, PIX2PIX = "demo-sd15-inpainting-tiny", "demo-sd15-pix2pix-tiny"
PHOTO = cells.png_base64(cells.inputs()["in-photo-64x64.png"])
MASK = cells.png_base64(cells.inputs()["in-mask-rect-64x64.png"])
WIDE = cells.png_base64(cells.inputs()["in-wide-96x48.png"])
EDIT = {
    **SMALL,
    "seed": 7,
    "init_images": [PHOTO],
    "denoising_strength": 0.75,
    "image_cfg_scale": 1.5,
    "override_settings": {"sd_model_checkpoint": PIX2PIX},
}
INPAINT = {
    **SMALL,
    "seed": 7,
    "init_images": [PHOTO],
    "mask": MASK,
    "inpaint_full_res": False,
    "denoising_strength": 0.75,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inpainting-models")
    plain = make_demo_models(root)["sd15"]
    widen(plain, root / "checkpoints" / f"{INPAINTING}.safetensors", channels=9)
    widen(plain, root / "checkpoints" / f"{PIX2PIX}.safetensors", channels=8)
    return root


@pytest.fixture(scope="module")
def client(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log_path = tmp_path_factory.mktemp("inpainting-log") / "engine.log"
    with (
        run_engine(models, log_path, "--ckpt", INPAINTING) as engine,
        httpx.Client(base_url=engine.url + "/sdapi/v1", timeout=120) as c,
    ):
        yield c


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    result["info"] = json.loads(result["info"])
    return result


def pixels(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(png(body["images"][0]).convert("RGB"), dtype=np.int16)


def test_the_widened_checkpoint_keeps_every_key_and_the_first_four_channels(models: Path) -> None:
    plain = read_header(models / "checkpoints" / f"{SD15_NAME}.safetensors")
    wide = read_header(models / "checkpoints" / f"{INPAINTING}.safetensors")
    assert list(wide.tensors) == list(plain.tensors)
    conv, original = wide.tensors[UNET_CONV_IN], plain.tensors[UNET_CONV_IN]
    assert conv.shape == (original.shape[0], 9, *original.shape[2:])
    assert all(wide.tensors[k].shape == plain.tensors[k].shape for k in plain.tensors if k != UNET_CONV_IN)


def test_inpainting_with_a_mask_uses_the_image_conditioning(client: httpx.Client) -> None:
    body = post(client, "/img2img", INPAINT)
    info = body["info"]
    assert info["is_using_inpainting_conditioning"] is True and info["sd_model_name"] == INPAINTING
    text = info["infotexts"][0]
    # A1111's order: "Conditional mask weight" right after "Denoising strength"
    assert "Denoising strength: 0.75, Conditional mask weight: 1.0" in text
    result, original = pixels(body), np.asarray(cells.inputs()["in-photo-64x64.png"], dtype=np.int16)
    assert (result[:8] == original[:8]).all()  # outside the (blurred) mask the original is pasted back
    # the masked image reaches the UNet: weighting it out (A1111's inpainting_mask_weight 0) changes the image
    unmasked = post(client, "/img2img", {**INPAINT, "override_settings": {"inpainting_mask_weight": 0.0}})
    assert "Conditional mask weight: 0.0" in unmasked["info"]["infotexts"][0]
    assert np.abs(pixels(unmasked) - result).max() > 8


@pytest.mark.parametrize(
    "body",
    [
        {**INPAINT, "mask": None},  # img2img without a mask: everything counts as masked
        {**INPAINT, "inpaint_full_res": True, "inpaint_full_res_padding": 8, "inpainting_fill": 2},
        {**INPAINT, "sampler_name": "DDIM", "batch_size": 2},
    ],
    ids=["no mask", "only masked, latent noise", "DDIM batch of 2"],
)
def test_every_img2img_form_runs_on_an_inpainting_checkpoint(
    client: httpx.Client, body: dict[str, Any]
) -> None:
    result = post(client, "/img2img", body)
    assert len(result["images"]) == int(body.get("batch_size", 1))
    assert "Conditional mask weight: 1.0" in result["info"]["infotexts"][0]


def test_txt2img_on_an_inpainting_checkpoint_is_a_fully_masked_grey_image(client: httpx.Client) -> None:
    body = post(client, "/txt2img", {**SMALL, "seed": 3})
    assert body["info"]["is_using_inpainting_conditioning"] is True
    assert "Conditional mask weight: 1.0" in body["info"]["infotexts"][0]
    again = post(client, "/txt2img", {**SMALL, "seed": 3})
    assert (pixels(again) == pixels(body)).all()  # the grey image's encoding is seeded by the noise draw


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/txt2img", {**SMALL, "enable_hr": True, "hr_scale": 1.5}, "enable_hr"),
        ("/img2img", {**INPAINT, "mask": None, "init_images": [WIDE], "resize_mode": 3}, "resize_mode 3"),
        ("/img2img", {**INPAINT, "latent_mask": MASK}, "latent_mask"),
        ("/txt2img", {**SMALL, "override_settings": {"sd_model_checkpoint": PIX2PIX}}, PIX2PIX),
        ("/img2img", {**EDIT, "prompt": "a fox AND a cat"}, "AND"),
    ],
    ids=["hires fix", "latent resize of another size", "latent_mask", "pix2pix txt2img", "pix2pix AND"],
)
def test_what_it_cannot_do_is_refused_naming_the_field_or_checkpoint(
    client: httpx.Client, path: str, body: dict[str, Any], named: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


def test_instruct_pix2pix_edits_the_init_image_with_its_image_guidance(client: httpx.Client) -> None:
    body = post(client, "/img2img", EDIT)
    text = body["info"]["infotexts"][0]
    assert "CFG scale: 7.0, Image CFG scale: 1.5, Seed: 7" in text and body["info"]["warnings"] == []
    assert body["info"]["is_using_inpainting_conditioning"] is False
    # the image guidance weighs the image-conditioned prediction: another scale, other pixels
    other = post(client, "/img2img", {**EDIT, "image_cfg_scale": 3.0})
    assert np.abs(pixels(other) - pixels(body)).max() > 8
    # without image_cfg_scale (or at 1) the image conditions both predictions, as in A1111
    plain = post(client, "/img2img", {**EDIT, "image_cfg_scale": None})
    assert "Image CFG scale" not in plain["info"]["infotexts"][0]
    assert (pixels(post(client, "/img2img", {**EDIT, "image_cfg_scale": 1.0})) == pixels(plain)).all()


def test_image_cfg_scale_on_another_checkpoint_is_ignored_with_a_warning(client: httpx.Client) -> None:
    body = post(client, "/img2img", {**INPAINT, "image_cfg_scale": 1.5})
    assert "Image CFG scale" not in body["info"]["infotexts"][0]
    assert any("image_cfg_scale" in w for w in body["info"]["warnings"])
