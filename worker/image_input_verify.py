"""The img2img part of the post-check (``worker.verify``): what A1111 reports it did with the images.

A1111 v1.10.1 records in the infotext (``StableDiffusionProcessingImg2Img.init``): ``Denoising strength``
always; with a mask, ``Mask blur`` (when x and y agree and are not 0), ``Masked content`` (``fill``,
``latent noise``, ``latent nothing``; nothing for ``original``), ``Mask mode: Inpaint not masked`` when
inverted and ``Inpaint area: Only masked`` for ``inpaint_full_res``. A blank mask with "only masked" makes
A1111 fall back to plain img2img (and drop ``Inpaint area`` and ``Masked content``): not a mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from worker.a1111.img2img_fields import IMG2IMG_FIELDS, INPAINTING_FILL_NAMES


def _differs(reported: str | None, wanted: Any) -> bool:
    if reported is None or wanted is None:
        return bool(reported != wanted)
    try:
        return not math.isclose(float(reported), float(wanted), abs_tol=1e-6)
    except ValueError:
        return str(reported) != str(wanted)


def expected_mask_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The mask fields A1111 writes for this payload (``None``: the field is absent)."""
    default = IMG2IMG_FIELDS
    blur = payload.get("mask_blur")
    blur_x = blur if blur is not None else payload.get("mask_blur_x", default["mask_blur_x"])
    blur_y = blur if blur is not None else payload.get("mask_blur_y", default["mask_blur_y"])
    fill = int(payload.get("inpainting_fill", default["inpainting_fill"]))
    return {
        "Mask blur": blur_x if blur_x == blur_y and blur_x > 0 else None,
        "Masked content": None if fill == 1 else INPAINTING_FILL_NAMES[fill],
        "Mask mode": "Inpaint not masked" if payload.get("inpainting_mask_invert") else None,
    }


def image_input_problems(payload: Mapping[str, Any], fields: Mapping[str, str]) -> list[str]:
    """Every img2img field A1111 reports differently from ``payload`` (nothing for txt2img).

    Args:
        fields: the first image's infotext fields (``worker.verify.parse_infotext``).
    """
    if "init_images" not in payload or not fields:
        return []
    wanted = {"Denoising strength": payload.get("denoising_strength", IMG2IMG_FIELDS["denoising_strength"])}
    if payload.get("mask"):
        wanted.update(expected_mask_fields(payload))
        full_res = payload.get("inpaint_full_res", IMG2IMG_FIELDS["inpaint_full_res"])
        if full_res and "Inpaint area" not in fields:
            wanted.pop("Masked content")  # a blank mask: A1111 fell back to plain img2img
    return [
        f"{name.lower()} {fields.get(name)!r} instead of {value!r}"
        for name, value in wanted.items()
        if _differs(fields.get(name), value)
    ]
