"""The img2img, inpainting and extras requests the parity goldens pin, and the input images they use.

Input images are drawn here (deterministic numpy, no files needed) and stored beside the goldens as PNGs;
a payload names them as ``"@<file>"`` and :func:`resolve` puts the base64 in before sending.

A1111's img2img samples the VAE posterior from torch's global CPU generator, which its noise code left
seeded with the previous request's last seed: every img2img cell is therefore sent right after
:data:`PRIMER`, a one-step txt2img that leaves that generator seeded with :data:`PRIMER_SEED`, both when
recording and when comparing (the engine keeps the same generator, ``sampling.noise.global_generator``).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PRIMER_SEED = 4242
PRIMER: dict[str, Any] = {
    "prompt": "primer",
    "steps": 1,
    "width": 64,
    "height": 64,
    "seed": PRIMER_SEED,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
}
#: instruct-pix2pix checkpoints cannot run txt2img (A1111 fails): a one-step img2img seeds the generator the
#: same way (its noise draw re-seeds it; pix2pix's conditioning takes the posterior's mean, no draw)
EDIT_PRIMER: dict[str, Any] = {**PRIMER, "init_images": ["@in-photo-64x64.png"], "denoising_strength": 0.5}
BASE: dict[str, Any] = {
    "prompt": "a red fox in the snow",
    "negative_prompt": "blurry",
    "steps": 5,
    "cfg_scale": 7.0,
    "width": 64,
    "height": 64,
    "seed": 1234,
    "sampler_name": "DPM++ 2M",
    "scheduler": "Karras",
    "denoising_strength": 0.6,
}
SAMPLERS = (
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
    "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
    "PLMS", "UniPC", "LCM",
)  # fmt: skip


def _picture(width: int, height: int, alpha: bool = False) -> Image.Image:
    """Gradients, a disc and a bar: structure the VAE and the resizes act on, not noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin(x / 5) * np.cos(y / 7)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) * 0.25) ** 2
    r[disc], g[disc], b[disc] = 240, 200, 40
    bar = (y > height * 0.7) & (y < height * 0.8)
    r[bar], g[bar], b[bar] = 20, 30, 90
    channels = [r, g, b]
    if alpha:
        channels.append(np.where(x < width / 3, 0, np.where(x < width / 2, 128, 255)))
    array = np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGBA" if alpha else "RGB")


def _mask(width: int, height: int, box: tuple[int, int, int, int], mode: str = "L") -> Image.Image:
    array = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    array[y1:y2, x1:x2] = 255
    if mode == "RGBA":  # the mask in the alpha channel, as A1111's UI sends it
        rgba = np.zeros((height, width, 4), dtype=np.uint8)
        rgba[:, :, 3] = array
        return Image.fromarray(rgba, "RGBA")
    return Image.fromarray(array, "L")


def inputs() -> dict[str, Image.Image]:
    """Every input image by file name."""
    return {
        "in-photo-64x64.png": _picture(64, 64),
        "in-wide-96x48.png": _picture(96, 48),
        "in-tall-48x80.png": _picture(48, 80),
        "in-alpha-64x64.png": _picture(64, 64, alpha=True),
        "in-mask-rect-64x64.png": _mask(64, 64, (16, 20, 40, 44)),
        "in-mask-corner-64x64.png": _mask(64, 64, (44, 2, 62, 14)),
        "in-mask-small-32x32.png": _mask(32, 32, (8, 10, 20, 22)),
        "in-mask-alpha-64x64.png": _mask(64, 64, (16, 20, 40, 44), "RGBA"),
        "in-mask-blank-64x64.png": _mask(64, 64, (0, 0, 0, 0)),
        "in-mask-wide-96x48.png": _mask(96, 48, (30, 10, 60, 34)),
    }


def write_inputs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in inputs().items():
        image.save(folder / name, format="PNG")


def resolve(payload: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The payload with each ``"@file"`` replaced by that file's base64."""

    def one(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            return base64.b64encode((folder / value[1:]).read_bytes()).decode("ascii")
        if isinstance(value, list):
            return [one(v) for v in value]
        return value

    return {key: one(value) for key, value in payload.items()}


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def img2img_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """Plain img2img: resize modes, strengths, options, batches, a few samplers."""
    photo = {**BASE, "init_images": ["@in-photo-64x64.png"]}
    wide, tall = ["@in-wide-96x48.png"], ["@in-tall-48x80.png"]
    yield "img2img|DPM++ 2M Karras 0.6", photo
    yield (
        "img2img|Euler a 0.75",
        {**photo, "sampler_name": "Euler a", "scheduler": "Automatic", "denoising_strength": 0.75},
    )
    # a low strength keeps the resized input visible: each resize mode reads < 40 dB against another
    resized = {**photo, "denoising_strength": 0.3}
    for mode in (0, 1, 2):
        yield f"img2img|resize {mode} wide", {**resized, "init_images": wide, "resize_mode": mode}
        yield f"img2img|resize {mode} tall", {**resized, "init_images": tall, "resize_mode": mode}
    yield "img2img|resize 3 wide (latent)", {**resized, "init_images": wide, "resize_mode": 3}
    yield "img2img|output 48x80 from 64x64", {**photo, "width": 48, "height": 80}
    for strength in (1.0, 0.0, 0.05, 0.3):
        yield f"img2img|strength {strength}", {**photo, "denoising_strength": strength}
    yield "img2img|img2img_fix_steps", {**photo, "override_settings": {"img2img_fix_steps": True}}
    yield "img2img|initial_noise_multiplier 0.8", {**photo, "initial_noise_multiplier": 0.8}
    yield (
        "img2img|batch of 2 (Euler a)",
        {**photo, "batch_size": 2, "sampler_name": "Euler a", "scheduler": "Automatic"},
    )
    yield "img2img|two init images", {**photo, "batch_size": 2, "init_images": ["@in-photo-64x64.png", *wide]}
    yield "img2img|n_iter 2", {**photo, "n_iter": 2}
    yield "img2img|RGBA init (white background)", {**photo, "init_images": ["@in-alpha-64x64.png"]}
    yield "img2img|variation seed 0.3", {**photo, "subseed": 99, "subseed_strength": 0.3}
    for sampler in ("Euler", "Heun", "DPM++ SDE", "DDIM", "UniPC", "LCM"):
        yield f"img2img|{sampler}", {**photo, "sampler_name": sampler, "scheduler": "Automatic"}


def inpaint_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """Inpainting: fill modes, only-masked with padding, blur, invert, mask kinds."""
    base = {**BASE, "init_images": ["@in-photo-64x64.png"], "mask": "@in-mask-rect-64x64.png"}
    whole = {**base, "inpaint_full_res": False}
    # at strength 0.3 the four fill modes read 18-31 dB against each other (at 0.6: 36-58 dB)
    for fill, name in ((0, "fill"), (1, "original"), (2, "latent noise"), (3, "latent nothing")):
        yield f"inpaint|whole picture, {name}", {**whole, "inpainting_fill": fill, "denoising_strength": 0.3}
    yield "inpaint|only masked (API default), fill", base
    yield (
        "inpaint|only masked padding 8, original",
        {**base, "inpaint_full_res_padding": 8, "inpainting_fill": 1},
    )
    yield (
        "inpaint|only masked corner, padding 4, latent noise",
        {**base, "mask": "@in-mask-corner-64x64.png", "inpaint_full_res_padding": 4, "inpainting_fill": 2},
    )
    yield "inpaint|only masked 48x80", {**base, "width": 48, "height": 80, "inpainting_fill": 1}
    yield "inpaint|invert mask", {**whole, "inpainting_mask_invert": 1, "inpainting_fill": 1}
    yield "inpaint|no blur", {**whole, "mask_blur": 0, "inpainting_fill": 1}
    yield "inpaint|blur x 6 y 2", {**whole, "mask_blur_x": 6, "mask_blur_y": 2, "inpainting_fill": 1}
    yield "inpaint|mask_round false", {**whole, "mask_round": False, "mask_blur": 8, "inpainting_fill": 1}
    yield "inpaint|alpha mask", {**whole, "mask": "@in-mask-alpha-64x64.png", "inpainting_fill": 1}
    yield "inpaint|mask 32x32 for a 64x64 image", {**whole, "mask": "@in-mask-small-32x32.png"}
    yield "inpaint|blank mask, only masked (img2img)", {**base, "mask": "@in-mask-blank-64x64.png"}
    yield (
        "inpaint|crop and resize wide",
        {**whole, "init_images": ["@in-wide-96x48.png"], "mask": "@in-mask-wide-96x48.png", "resize_mode": 1},
    )
    yield (
        "inpaint|Euler a 0.9",
        {
            **whole,
            "sampler_name": "Euler a",
            "scheduler": "Automatic",
            "denoising_strength": 0.9,
            "inpainting_fill": 1,
        },
    )
    yield "inpaint|DDIM", {**whole, "sampler_name": "DDIM", "scheduler": "Automatic", "inpainting_fill": 1}
    yield "inpaint|overlay_inpaint off", {**whole, "override_settings": {"overlay_inpaint": False}}
    yield "inpaint|batch of 2, latent noise", {**whole, "batch_size": 2, "inpainting_fill": 2}


def grid_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every sampler on its Automatic schedule, plain img2img and inpainting (docs/engine.md)."""
    photo = {**BASE, "init_images": ["@in-photo-64x64.png"], "scheduler": "Automatic"}
    for sampler in SAMPLERS:
        yield f"img2img|{sampler}", {**photo, "sampler_name": sampler}
        yield (
            f"inpaint|{sampler}",
            {
                **photo,
                "sampler_name": sampler,
                "mask": "@in-mask-rect-64x64.png",
                "inpaint_full_res": False,
                "inpainting_fill": 1,
            },
        )


def sdxl_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """Full-size SDXL (tens of seconds a cell on a CPU): plain img2img, two resize modes, two inpaintings."""
    photo = {**BASE, "steps": 4, "init_images": ["@in-photo-64x64.png"]}
    wide = ["@in-wide-96x48.png"]
    yield "img2img|SDXL DPM++ 2M Karras 0.6", photo
    yield "img2img|SDXL strength 0.3", {**photo, "denoising_strength": 0.3}
    yield "img2img|SDXL resize 0 wide", {**photo, "denoising_strength": 0.3, "init_images": wide}
    yield (
        "img2img|SDXL resize 1 wide",
        {**photo, "denoising_strength": 0.3, "init_images": wide, "resize_mode": 1},
    )
    yield "img2img|SDXL Euler a", {**photo, "sampler_name": "Euler a", "scheduler": "Automatic"}
    masked = {**photo, "mask": "@in-mask-rect-64x64.png"}
    yield "inpaint|SDXL whole picture, fill", {**masked, "inpaint_full_res": False}
    yield (
        "inpaint|SDXL only masked padding 8, original",
        {**masked, "inpaint_full_res_padding": 8, "inpainting_fill": 1},
    )
    yield (
        "inpaint|SDXL DDIM whole picture, original",
        {**masked, "inpaint_full_res": False, "inpainting_fill": 1, "sampler_name": "DDIM"},
    )


def inpainting_model_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """An inpainting (9-channel) checkpoint: A1111's image conditioning with a mask, without one, and in
    txt2img (a grey image, fully masked)."""
    photo = {**BASE, "steps": 4, "init_images": ["@in-photo-64x64.png"]}
    masked = {**photo, "mask": "@in-mask-rect-64x64.png", "denoising_strength": 0.75}
    whole = {**masked, "inpaint_full_res": False}
    yield "inpaint|9ch whole picture, fill", whole
    yield "inpaint|9ch whole picture, original", {**whole, "inpainting_fill": 1}
    yield "inpaint|9ch whole picture, latent noise", {**whole, "inpainting_fill": 2}
    yield "inpaint|9ch only masked padding 8", {**masked, "inpaint_full_res_padding": 8}
    yield "inpaint|9ch invert, no blur", {**whole, "inpainting_mask_invert": 1, "mask_blur": 0}
    yield "inpaint|9ch DDIM", {**whole, "sampler_name": "DDIM", "scheduler": "Automatic"}
    yield (
        "inpaint|9ch Euler a batch of 2",
        {**whole, "sampler_name": "Euler a", "scheduler": "Automatic", "batch_size": 2},
    )
    yield "img2img|9ch no mask", photo
    yield "txt2img|9ch txt2img", {k: v for k, v in BASE.items() if k != "denoising_strength"} | {"steps": 4}


def pix2pix_model_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """An instruct-pix2pix (8-channel) checkpoint: the image guidance, none, and with a mask."""
    photo = {**BASE, "steps": 4, "init_images": ["@in-photo-64x64.png"], "denoising_strength": 0.75}
    yield "img2img|8ch image_cfg_scale 1.5", {**photo, "image_cfg_scale": 1.5}
    yield (
        "img2img|8ch image_cfg_scale 3 Euler a",
        {**photo, "image_cfg_scale": 3.0, "sampler_name": "Euler a"},
    )
    yield "img2img|8ch no image_cfg_scale", photo
    yield (
        "inpaint|8ch whole picture, image_cfg_scale 1.5",
        {**photo, "image_cfg_scale": 1.5, "mask": "@in-mask-rect-64x64.png", "inpaint_full_res": False},
    )


def extras_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """``/extra-single-image`` with the built-in upscalers."""
    photo = {"image": "@in-photo-64x64.png"}
    for name in ("Lanczos", "Nearest", "None"):
        yield f"extras|{name} x2", {**photo, "upscaler_1": name, "upscaling_resize": 2}
    yield "extras|Lanczos x1.5", {**photo, "upscaler_1": "Lanczos", "upscaling_resize": 1.5}
    yield (
        "extras|Nearest to 100x60 crop",
        {
            **photo,
            "upscaler_1": "Nearest",
            "resize_mode": 1,
            "upscaling_resize_w": 100,
            "upscaling_resize_h": 60,
            "upscaling_crop": True,
        },
    )
    yield (
        "extras|Lanczos to 80x120 no crop",
        {
            **photo,
            "upscaler_1": "Lanczos",
            "resize_mode": 1,
            "upscaling_resize_w": 80,
            "upscaling_resize_h": 120,
            "upscaling_crop": False,
        },
    )
    yield (
        "extras|Lanczos + Nearest 0.4",
        {
            **photo,
            "upscaler_1": "Lanczos",
            "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.4,
            "upscaling_resize": 3,
        },
    )
    yield (
        "extras|wide Nearest x2.5",
        {"image": "@in-wide-96x48.png", "upscaler_1": "Nearest", "upscaling_resize": 2.5},
    )


def primer(cell: str) -> tuple[str, dict[str, Any]]:
    """The request sent before an img2img cell, and its path: :data:`EDIT_PRIMER` for the pix2pix cells."""
    return ("img2img", EDIT_PRIMER) if "|8ch " in cell else ("txt2img", PRIMER)


def endpoint(cell: str) -> str:
    """The A1111 path a cell is sent to, by its name's prefix."""
    kind = cell.split("|", 1)[0]
    return {"img2img": "img2img", "inpaint": "img2img", "extras": "extra-single-image"}.get(kind, "txt2img")
