"""The image endpoints' part of the A1111 transcripts: img2img, inpainting, extras, png-info, interrogate.

Run by ``scripts/record_a1111_transcripts.py`` (everything) or alone; either way on a fresh A1111 of its own
(settings that stick from the txt2img session would otherwise show here), writing
``tests/fixtures/a1111/images.json`` and ``openapi_image_fields.json``::

    A1111_DIR=... [A1111_PYTHON=...] .venv/bin/python scripts/record_a1111_images.py [--out DIR]

The input images are built here, small and deterministic (``tests/support/input_images.py``); the answers'
images are kept as their size only, except png-info's answer, which is text.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import input_images as test_images  # noqa: E402

log = logging.getLogger("record_a1111_images")

BASE: dict[str, Any] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11}
INIT = test_images.png_b64(64, 64)
MASK = test_images.mask_png_b64(64, 64)
BLANK_MASK = test_images.mask_png_b64(64, 64, blank=True)
INPAINT = {**BASE, "init_images": [INIT], "mask": MASK, "inpaint_full_res": False}


def _img2img() -> list[tuple[str, dict[str, Any]]]:
    """(name, body) of every img2img exchange, in order."""
    return [
        ("img2img_minimal", {**BASE, "init_images": [INIT]}),
        ("img2img_denoising", {**BASE, "init_images": [INIT], "denoising_strength": 0.3}),
        ("img2img_data_uri", {**BASE, "init_images": ["data:image/png;base64," + INIT]}),
        ("img2img_jpeg_exif_rotated", {**BASE, "init_images": [test_images.jpeg_b64(48, 64, orientation=6)]}),
        ("img2img_cmyk_jpeg", {**BASE, "init_images": [test_images.jpeg_b64(64, 64, mode="CMYK")]}),
        ("img2img_rgba", {**BASE, "init_images": [test_images.png_b64(64, 64, mode="RGBA")]}),
        *[
            (
                f"img2img_resize_mode_{m}",
                {**BASE, "init_images": [test_images.png_b64(96, 64)], "resize_mode": m},
            )
            for m in range(4)
        ],
        ("img2img_two_images_batch_1", {**BASE, "init_images": [INIT, INIT]}),
        ("img2img_two_images_batch_2", {**BASE, "init_images": [INIT, INIT], "batch_size": 2}),
        ("img2img_two_images_batch_3", {**BASE, "init_images": [INIT, INIT], "batch_size": 3}),
        (
            "img2img_sampler_and_overrides",
            {
                **BASE,
                "init_images": [INIT],
                "sampler_name": "Euler a",
                "scheduler": "Karras",
                "override_settings": {"sd_model_checkpoint": "tiny_b", "CLIP_stop_at_last_layers": 2},
            },
        ),
        ("img2img_lora", {**BASE, "init_images": [INIT], "prompt": "a lighthouse <lora:tiny_lora:0.8>"}),
        *[(f"inpaint_fill_{fill}", {**INPAINT, "inpainting_fill": fill}) for fill in range(4)],
        ("inpaint_only_masked", {**INPAINT, "inpaint_full_res": True, "inpaint_full_res_padding": 8}),
        ("inpaint_default_is_only_masked", {**BASE, "init_images": [INIT], "mask": MASK}),
        ("inpaint_invert", {**INPAINT, "inpainting_mask_invert": 1}),
        ("inpaint_blur_xy", {**INPAINT, "mask_blur_x": 2, "mask_blur_y": 6}),
        ("inpaint_blur_0", {**INPAINT, "mask_blur": 0}),
        ("inpaint_blank_mask_only_masked", {**BASE, "init_images": [INIT], "mask": BLANK_MASK}),
        (
            "inpaint_mask_other_size_only_masked",
            {**BASE, "init_images": [INIT], "mask": test_images.mask_png_b64(32, 32)},
        ),
        ("inpaint_mask_other_size", {**INPAINT, "mask": test_images.mask_png_b64(32, 32)}),
        ("inpaint_rgba_mask", {**INPAINT, "mask": test_images.mask_png_b64(64, 64, alpha=True)}),
        ("img2img_restore_faces", {**BASE, "init_images": [INIT], "restore_faces": True}),
        # The network-volume worker's own example (tests/img2img.py), on the tiny models.
        (
            "peer_example_img2img",
            {
                "init_images": [test_images.jpeg_b64(64, 80)],
                "override_settings": {"sd_model_checkpoint": "tiny_a", "sd_vae": "tiny_vae.safetensors"},
                "prompt": "at the ocean",
                "negative_prompt": "",
                "seed": -1,
                "batch_size": 1,
                "denoising_strength": 0.55,
                "steps": 2,
                "cfg_scale": 10,
                "width": 64,
                "height": 80,
                "sampler_name": "DPM++ SDE",
                "sampler_index": "DPM++ SDE",
                "scheduler": "karras",
            },
        ),
    ]


def _tools() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, endpoint, body) of the extras, png-info and interrogate exchanges."""
    extras = {"image": INIT}
    return [
        (
            "extras_lanczos_x2",
            "extra-single-image",
            {**extras, "upscaler_1": "Lanczos", "upscaling_resize": 2},
        ),
        (
            "extras_nearest_to_size",
            "extra-single-image",
            {
                **extras,
                "upscaler_1": "Nearest",
                "resize_mode": 1,
                "upscaling_resize_w": 80,
                "upscaling_resize_h": 48,
            },
        ),
        ("extras_defaults", "extra-single-image", extras),
        (
            "extras_exif_rotated",
            "extra-single-image",
            {
                "image": test_images.jpeg_b64(48, 64, orientation=6),
                "upscaler_1": "Nearest",
                "upscaling_resize": 1,
            },
        ),
        ("extras_unknown_upscaler", "extra-single-image", {**extras, "upscaler_1": "4x-UltraSharp"}),
        ("extras_lowercase_upscaler", "extra-single-image", {**extras, "upscaler_1": "lanczos"}),
        (
            "extras_batch",
            "extra-batch-images",
            {
                "imageList": [
                    {"data": INIT, "name": "a.png"},
                    {"data": test_images.png_b64(32, 48), "name": "b.png"},
                ],
                "upscaler_1": "Lanczos",
                "upscaling_resize": 2,
            },
        ),
        ("png_info_plain", "png-info", {"image": INIT}),
        (
            "png_info_with_parameters",
            "png-info",
            {"image": test_images.png_b64(16, 16, parameters=test_images.INFOTEXT)},
        ),
        ("interrogate_clip", "interrogate", {"image": INIT, "model": "clip"}),
        ("interrogate_deepdanbooru", "interrogate", {"image": INIT, "model": "deepdanbooru"}),
        ("interrogate_unknown_model", "interrogate", {"image": INIT, "model": "nope"}),
        ("bad_base64", "img2img", {**BASE, "init_images": ["not an image"]}),
        ("truncated_png", "img2img", {**BASE, "init_images": [INIT[: len(INIT) // 2 // 4 * 4]]}),
        ("no_init_images", "img2img", dict(BASE)),
    ]


def openapi_image_fields(url: str, auth: tuple[str, str] | None) -> dict[str, Any]:
    """The request fields and defaults of the image endpoints, from A1111's own ``/openapi.json``."""
    schema = requests.get(url + "/openapi.json", auth=auth, timeout=60).json()["components"]["schemas"]

    def fields(name: str) -> dict[str, Any]:
        return {key: prop.get("default") for key, prop in schema[name]["properties"].items()}

    return {
        "img2img": fields("StableDiffusionProcessingImg2Img"),
        "extra-single-image": fields("ExtrasSingleImageRequest"),
        "extra-batch-images": fields("ExtrasBatchImagesRequest"),
        "png-info": fields("PNGInfoRequest"),
        "interrogate": fields("InterrogateRequest"),
    }


def record(recorder: Any) -> list[dict[str, Any]]:
    """Every image exchange through ``recorder`` (``record_a1111_transcripts.Recorder``); returns them."""
    start = len(recorder.exchanges)
    for name, body in _img2img():
        recorder.call(name, "POST", "img2img", body)
    for name, endpoint, body in _tools():
        recorder.call(name, "POST", endpoint, body)
    return recorder.exchanges[start:]


def write(out: Path, exchanges: list[dict[str, Any]], fields: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "images.json").write_text(json.dumps(exchanges, indent=1, ensure_ascii=False) + "\n")
    (out / "openapi_image_fields.json").write_text(json.dumps(fields, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    from scripts.record_a1111_transcripts import Recorder, fresh_engine, recording_setup
    from tests.support.real_a1111 import launched

    out, install = recording_setup(__doc__, argv)
    with tempfile.TemporaryDirectory(prefix="a1111-record-") as tmp_name:
        tmp = Path(tmp_name)
        _, env, scrub = fresh_engine(install, tmp)  # no --api-auth: the engine listens on loopback only
        with launched(env, tmp / "start.log") as started:
            exchanges = record(Recorder(started.url, scrub))
            fields = openapi_image_fields(started.url, None)
    write(out, exchanges, fields)
    log.info("image transcripts written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
