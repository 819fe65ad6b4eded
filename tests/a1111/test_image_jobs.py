"""Images in, on the real A1111 v1.10.1: img2img, inpainting (each fill mode), extras, png-info, interrogation's
refusal and the hostile images, through the handler (docs/api.md, "Images in").

One engine for the module (conftest ``engine``). The network-volume worker's own img2img example payload is
sent through its envelope, with the tiny models' names in place of its checkpoint and VAE.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from tests.a1111.conftest import Engine, info_of
from tests.support import input_images as ti
from tests.support.fixtures import load_json
from worker.handler import JobRunner
from worker.verify import parse_infotext

BASE: dict[str, Any] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11}
INIT = ti.png_b64(64, 64)
MASK = ti.mask_png_b64(64, 64)


@pytest.fixture(scope="module")
def runner(engine: Engine) -> JobRunner:
    return engine.runner()


def run(runner: JobRunner, job_input: dict[str, Any]) -> Any:
    return runner.run({"id": "a1111-images", "input": job_input})


def fields_of(output: Any) -> dict[str, str]:
    return parse_infotext(info_of(output)["infotexts"][0])


def size_of(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


def calls(runner: JobRunner, method: str) -> list[Any]:
    """Record every call of one engine method (the real call still happens)."""
    seen: list[Any] = []
    original: Callable[..., dict[str, Any]] = getattr(runner.engine, method)

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(args)
        return original(*args, **kwargs)

    setattr(runner.engine, method, spy)
    return seen


def test_native_img2img(runner: JobRunner, engine: Engine) -> None:
    out = run(
        runner,
        {**BASE, "init_images": [INIT], "denoising_strength": 0.4, "checkpoint": engine.names.checkpoint},
    )
    fields = fields_of(out)
    assert fields["Denoising strength"] == "0.4"
    assert fields["Model"] == engine.names.checkpoint
    assert [size_of(image) for image in out["images"]] == [(64, 64)]
    assert out["seeds"] == [11]


def test_img2img_with_a_lora_sampler_and_clip_skip(runner: JobRunner, engine: Engine) -> None:
    lora = engine.names.need("lora")
    job = {**BASE, "init_images": [INIT], "loras": [{"name": lora, "weight": 0.8}], "sampler": "Euler a"}
    out = run(runner, {**job, "scheduler": "Karras", "clip_skip": 2})
    fields = fields_of(out)
    assert (fields["Sampler"], fields["Schedule type"], fields["Clip skip"]) == ("Euler a", "Karras", "2")
    assert lora in fields["Lora hashes"]


@pytest.mark.parametrize(
    ("fill", "recorded"),
    [
        ("fill", "fill"),
        ("original", None),
        ("latent noise", "latent noise"),
        ("latent nothing", "latent nothing"),
    ],
)
def test_inpainting_in_each_fill_mode(runner: JobRunner, fill: str, recorded: str | None) -> None:
    job = {**BASE, "init_images": [INIT], "mask": MASK, "inpainting_fill": fill, "inpaint_full_res": False}
    fields = fields_of(run(runner, {**job, "mask_blur": 3}))
    assert fields.get("Masked content") == recorded
    assert fields["Mask blur"] == "3"


def test_only_masked_with_padding_and_an_inverted_mask(runner: JobRunner) -> None:
    job = {
        **BASE,
        "init_images": ["data:image/png;base64," + INIT],
        "mask": ti.mask_png_b64(64, 64, alpha=True),
    }
    fields = fields_of(run(runner, {**job, "inpaint_full_res_padding": 8, "inpainting_mask_invert": True}))
    assert (fields["Inpaint area"], fields["Masked area padding"]) == ("Only masked", "8")
    assert fields["Mask mode"] == "Inpaint not masked"


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_resize_mode(runner: JobRunner, mode: int) -> None:
    out = run(runner, {**BASE, "init_images": [ti.png_b64(96, 64)], "resize_mode": mode})
    assert [size_of(image) for image in out["images"]] == [(64, 64)]


def test_several_init_images_and_odd_modes(runner: JobRunner) -> None:
    images = [INIT, ti.jpeg_b64(48, 64, orientation=6), ti.jpeg_b64(64, 64, mode="CMYK")]
    out = run(runner, {**BASE, "init_images": [*images, ti.png_b64(64, 64, mode="RGBA")]})
    assert len(out["images"]) == 4 and out["seeds"] == [11, 12, 13, 14]


def test_the_peer_envelope_example(runner: JobRunner, engine: Engine) -> None:
    job = load_json("jobs/images/envelope_img2img.json")["input"]
    payload = job["payload"]
    payload["init_images"] = [ti.jpeg_b64(64, 80)]
    payload["override_settings"] = {"sd_model_checkpoint": engine.names.checkpoint}
    if engine.names.vae:
        payload["override_settings"]["sd_vae"] = engine.names.vae
    payload.update(steps=2, width=64, height=80)
    refused = run(
        runner, job
    )  # its restore_faces: A1111 would download CodeFormer now (tests/worker/test_tool_models)
    assert refused["error"].startswith("model_not_found: restore_faces with CodeFormer needs "), refused
    del payload["restore_faces"]
    fields = fields_of(run(runner, job))
    assert (fields["Sampler"], fields["Schedule type"], fields["Size"]) == ("DPM++ SDE", "Karras", "64x80")
    assert fields["Denoising strength"] == "0.55"


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ({"init_images": [ti.b64(ti.bomb_png())]}, "init_images[0]: declares 12000x12000"),
        (
            {"init_images": [INIT, INIT[: len(INIT) // 2 // 4 * 4]]},
            "init_images[1]: a truncated or corrupt PNG",
        ),
        ({"init_images": [ti.b64(ti.other_format_bytes("GIF"))]}, "a GIF image: send PNG, JPEG or WebP"),
        ({"init_images": [INIT], "mask": ti.mask_png_b64(64, 64) + "!"}, "mask: not base64"),
        (
            {"init_images": [INIT], "mask": ti.mask_png_b64(32, 32)},
            "mask: mask is 32x32, init_images[0] is 64x64",
        ),
        ({"init_images": [ti.b64(ti.png16_gray_bytes(64, 64))]}, "16-bit grayscale"),
    ],
)
def test_hostile_images_never_reach_a1111(runner: JobRunner, images: dict[str, Any], message: str) -> None:
    sent = calls(runner, "img2img")
    out = run(runner, {**BASE, **images})
    assert out["error"].startswith("input_invalid: ") and message in out["error"], out
    assert sent == []


def test_extras_upscale(runner: JobRunner) -> None:
    out = run(
        runner, {"upscale": {"image": ti.jpeg_b64(48, 64, orientation=6), "upscaler": "Lanczos", "scale": 2}}
    )
    assert [size_of(image) for image in out["images"]] == [(128, 96)]  # A1111 applies EXIF orientation
    batch = [{"data": INIT, "name": "a"}, {"data": ti.png_b64(32, 16), "name": "b"}]
    body = {"imageList": batch, "upscaler_1": "Nearest", "resize_mode": 1, "upscaling_resize_w": 80}
    out = run(
        runner,
        {"api": {"endpoint": "/sdapi/v1/extra-batch-images"}, "payload": {**body, "upscaling_resize_h": 40}},
    )
    assert [size_of(image) for image in out["images"]] == [(80, 40), (80, 40)]
    out = run(runner, {"upscale": {"image": INIT, "upscaler": "4x-UltraSharp"}})
    assert out["error"].startswith("input_invalid: upscaler_1 '4x-UltraSharp' not found")


def test_png_info_of_a_generated_image(runner: JobRunner) -> None:
    generated = run(runner, {**BASE, "init_images": [INIT]})
    out = run(runner, {"png_info": {"image": generated["images"][0]}})
    assert out["info"] == info_of(generated)["infotexts"][0]
    assert out["parameters"]["Denoising strength"] == "0.75"


def test_interrogation_is_refused_without_its_weights(runner: JobRunner) -> None:
    for model, weight in (
        ("clip", "BLIP/model_base_caption_capfilt_large.pth"),
        ("deepdanbooru", "model-resnet"),
    ):
        out = run(runner, {"interrogate": {"image": INIT, "model": model}})
        assert out["error"].startswith(f"model_not_found: interrogate model {model!r} needs "), out
        assert weight in out["error"]
