"""Images in, end to end on the real embedded engine (tiny random models) over real HTTP.

The same job path as production for every form docs/api.md ("Images in") documents: the native img2img and
inpainting jobs, a plain A1111 img2img body, the network-volume worker's envelope, an upscale, png-info on
an image the engine made, and interrogation, which this engine does not serve. The images are noise; what is
checked is that each request reached the engine as asked and that the engine reports doing it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.e2e.test_embedded_e2e import infotext, make_runner
from tests.support import input_images as ti
from tests.support.fixtures import load_json
from worker.handler import JobRunner
from worker.verify import parse_infotext

pytestmark = pytest.mark.engine

BASE: dict[str, Any] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11}
INIT = ti.png_b64(64, 64)
MASK = ti.mask_png_b64(64, 64)


@pytest.fixture
def runner(embedded_engine: Any, tmp_path: Path) -> JobRunner:
    return make_runner(embedded_engine.url, embedded_engine.models_dir, tmp_path, engine="embedded")


def run(runner: JobRunner, job_input: dict[str, Any]) -> dict[str, Any]:
    out = runner.run({"id": "e2e-images", "input": job_input})
    assert isinstance(out, dict)
    return out


def succeeded(out: dict[str, Any]) -> dict[str, str]:
    """The first image's infotext fields, once the job is known to have succeeded."""
    assert "error" not in out, out
    return parse_infotext(infotext(out["images"][0]))


def size_of(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


def test_native_img2img(runner: JobRunner) -> None:
    job = {**BASE, "init_images": [ti.png_b64(96, 64)], "resize_mode": 1, "denoising_strength": 0.4}
    out = run(runner, {**job, "checkpoint": "demo-sd15-tiny", "sampler": "Euler a", "mask_blur": 2})
    fields = succeeded(out)
    assert [size_of(image) for image in out["images"]] == [(64, 64)]
    assert out["seeds"] == [11]
    assert (fields["Denoising strength"], fields["Sampler"], fields["Seed"]) == ("0.4", "Euler a", "11")
    assert out["models"]["checkpoint"]["title"].startswith("demo-sd15-tiny.safetensors [")
    assert "mask_blur only apply with a mask; there is none, so A1111 ignores them" in out["warnings"]


def test_sdxl_img2img_with_several_init_images(runner: JobRunner) -> None:
    job = {**BASE, "checkpoint": "demo-sdxl-tiny", "width": 64, "height": 80, "denoising_strength": 0.5}
    out = run(runner, {**job, "init_images": [INIT, ti.jpeg_b64(64, 80)]})
    fields = succeeded(out)
    assert [size_of(image) for image in out["images"]] == [(64, 80), (64, 80)]
    assert out["seeds"] == [11, 12]  # one batch slot per init image
    assert (fields["Model"], fields["Denoising strength"]) == ("demo-sdxl-tiny", "0.5")
    assert out["models"]["checkpoint"]["architecture"] == "sdxl"


def test_same_img2img_job_same_image(runner: JobRunner) -> None:
    """The same job after the same request: the VAE posterior is drawn from A1111's global generator, which
    the request before seeded (docs/decisions.md), so the first run only primes it."""
    job = {**BASE, "init_images": [INIT], "denoising_strength": 0.5}
    run(runner, job)
    first, second = run(runner, job), run(runner, job)
    other = run(runner, {**job, "denoising_strength": 0.9})
    assert first["images"] == second["images"] != other["images"]


def test_native_inpainting_only_masked(runner: JobRunner) -> None:
    job = {**BASE, "init_images": [INIT], "mask": MASK, "inpainting_fill": "latent noise", "mask_blur": 3}
    out = run(runner, {**job, "inpaint_full_res": True, "inpaint_full_res_padding": 8, "batch_size": 2})
    fields = succeeded(out)
    assert [size_of(image) for image in out["images"]] == [(64, 64), (64, 64)]
    assert out["seeds"] == [11, 12]
    assert fields["Masked content"] == "latent noise"
    assert (fields["Inpaint area"], fields["Masked area padding"]) == ("Only masked", "8")
    assert (fields["Mask blur"], fields["Denoising strength"]) == ("3", "0.75")
    assert [w.split(":", 1)[0] for w in out["warnings"]] == [
        "demo-sd15-tiny.safetensors is not an inpainting checkpoint (4-channel UNet)"
    ]


def test_inpainting_keeps_what_the_mask_leaves_out(runner: JobRunner) -> None:
    """Whole picture, ``fill``: the corners (black in the mask, beyond its blur) are the init image's."""
    out = run(runner, {**BASE, "init_images": [INIT], "mask": MASK, "inpainting_fill": 0, "mask_blur": 0})
    assert succeeded(out)["Masked content"] == "fill"
    with Image.open(io.BytesIO(base64.b64decode(out["images"][0]))) as made:
        made_pixels = made.convert("RGB")
    with Image.open(io.BytesIO(base64.b64decode(INIT))) as init:
        init_pixels = init.convert("RGB")
    corners = [(0, 0), (63, 0), (0, 63), (63, 63)]
    assert [made_pixels.getpixel(c) for c in corners] == [init_pixels.getpixel(c) for c in corners]
    assert made_pixels.getpixel((32, 32)) != init_pixels.getpixel((32, 32))


def test_plain_a1111_img2img_body(runner: JobRunner) -> None:
    body = load_json("jobs/images/img2img_a1111_body.json")["input"]
    body.update(steps=2, width=80, height=64, override_settings={"sd_model_checkpoint": "demo-sd15-tiny"})
    out = run(runner, body)
    fields = succeeded(out)
    assert [size_of(image) for image in out["images"]] == [(80, 64)]
    assert (fields["Sampler"], fields["Schedule type"], fields["Size"]) == ("DPM++ 2M", "Karras", "80x64")
    assert (fields["Denoising strength"], fields["Mask blur"]) == ("0.6", "4")
    assert "Masked content" not in fields  # inpainting_fill 1, "original": A1111 records nothing
    assert out["seeds"] == [7]


def test_the_peer_envelope_example(runner: JobRunner) -> None:
    job = load_json("jobs/images/envelope_img2img.json")["input"]
    payload = job["payload"]
    payload.update(init_images=[ti.jpeg_b64(64, 80)], steps=2, width=64, height=80)
    payload["override_settings"] = {"sd_model_checkpoint": "demo-sd15-tiny", "sd_vae": "demo-vae-tiny"}
    refused = run(runner, job)  # its restore_faces: this engine has no face restorer, and says so
    assert (
        refused["error"].startswith("input_invalid: ")
        and "restore_faces is not supported" in refused["error"]
    )
    del payload["restore_faces"]
    out = run(runner, job)
    fields = succeeded(out)
    assert [size_of(image) for image in out["images"]] == [(64, 80)]
    assert (fields["Sampler"], fields["Schedule type"], fields["Size"]) == ("DPM++ SDE", "Karras", "64x80")
    assert fields["Denoising strength"] == "0.55"
    assert fields["VAE"] == "demo-vae-tiny"
    assert int(fields["Seed"]) == out["seeds"][0] >= 0  # seed -1: the engine's own, reported back


def test_upscale_with_lanczos(runner: JobRunner) -> None:
    out = run(runner, {"upscale": {"image": ti.png_b64(48, 32), "upscaler": "lanczos", "scale": 2}})
    assert "error" not in out, out
    assert [size_of(image) for image in out["images"]] == [(96, 64)]
    assert out["warnings"] == []
    envelope = load_json("jobs/images/envelope_extras.json")["input"]
    envelope["payload"].update(upscaling_resize_w=80, upscaling_resize_h=40)
    out = run(runner, envelope)
    assert [size_of(image) for image in out["images"]] == [(80, 40)]  # upscaling_crop: exactly the size
    batch = {"images": [INIT, ti.png_b64(32, 16)], "upscaler": "Nearest", "width": 80, "height": 40}
    out = run(runner, {"upscale": batch})
    assert [size_of(image) for image in out["images"]] == [(80, 40), (80, 40)]


def test_unknown_upscaler_names_the_engines_list(runner: JobRunner) -> None:
    out = run(runner, {"upscale": {"image": INIT, "upscaler": "R-ESRGAN 4x+"}})
    assert out["error"].startswith("input_invalid: upscaler_1 'R-ESRGAN 4x+' not found"), out
    assert "valid: None, Lanczos, Nearest" in out["error"]


def test_png_info_of_an_image_the_engine_made(runner: JobRunner) -> None:
    generated = run(runner, {**BASE, "init_images": [INIT], "denoising_strength": 0.3})
    out = run(runner, {"png_info": {"image": generated["images"][0]}})
    assert "error" not in out, out
    assert out["info"] == infotext(generated["images"][0])
    assert (out["parameters"]["Denoising strength"], out["parameters"]["Seed"]) == (
        "0.3",
        "11",
    )  # A1111's str
    envelope = {"api": {"method": "POST", "endpoint": "/sdapi/v1/png-info"}, "payload": {"image": INIT}}
    assert run(runner, envelope)["info"] == ""  # a PNG without parameters


@pytest.mark.parametrize("model", ["clip", "deepdanbooru"])
def test_interrogation_is_refused_on_the_embedded_engine(
    embedded_engine: Any, tmp_path: Path, model: str
) -> None:
    # Even with A1111's interrogation weights on the volume: this engine has no interrogator.
    volume = tmp_path / "volume"
    for relative in (
        "BLIP/model_base_caption_capfilt_large.pth",
        "CLIP/ViT-L-14.pt",
        "torch_deepdanbooru/model-resnet_custom_v3.pt",
    ):
        (volume / relative).parent.mkdir(parents=True, exist_ok=True)
        (volume / relative).write_bytes(b"weights")
    refusals = {}
    # told, or finding out from the engine's missing route (with ``auto``, this stand-in CLIP file is refused by
    # its sha256 before any call: tests/worker/test_image_jobs.py)
    for engine_kind in ("embedded", "auto") if model == "deepdanbooru" else ("embedded",):
        runner = make_runner(embedded_engine.url, volume, tmp_path, engine=engine_kind)
        refusals[engine_kind] = run(runner, {"interrogate": {"image": INIT, "model": model}})["error"]
    assert refusals["embedded"].startswith("input_invalid: interrogate is not served here: "), refusals
    if "auto" in refusals:
        assert refusals["auto"].startswith(
            "input_invalid: the engine has no /sdapi/v1/interrogate route (HTTP 404)"
        )
    for refusal in refusals.values():
        assert "the embedded engine has no interrogator" in refusal and "WORKER_ENGINE=a1111" in refusal


def test_through_the_local_api_of_the_embedded_engine(embedded_engine: Any) -> None:
    """``/worker/v1/txt2img`` mounted in the engine's own app (``WORKER_ENGINE=embedded`` there) runs them all."""
    url = f"{embedded_engine.url}/worker/v1/txt2img"
    img2img = {**BASE, "init_images": [INIT], "mask": MASK, "denoising_strength": 0.6}
    response = requests.post(url, json={"input": img2img}, timeout=120)
    assert response.status_code == 200, response.text
    assert "Denoising strength: 0.6" in infotext(response.json()["images"][0])
    upscale = {"upscale": {"image": INIT, "upscaler": "Nearest", "width": 96, "height": 96}}
    response = requests.post(url, json=upscale, timeout=120)
    assert response.status_code == 200, response.text
    assert [size_of(image) for image in response.json()["images"]] == [(96, 96)]
    response = requests.post(url, json={"interrogate": {"image": INIT}}, timeout=120)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("input_invalid: interrogate is not served here: ")
