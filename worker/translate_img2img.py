"""Img2img job → A1111 ``/sdapi/v1/img2img`` payload: txt2img's translation plus the image fields (pure).

Everything txt2img's translation does applies unchanged (``worker.translate``: resolved names, managed
settings, image flags); the img2img fields are A1111's own and pass through as given (``inpainting_fill``
names are already A1111's numbers, ``worker.image_jobs``). What is added here follows A1111 v1.10.1's
``StableDiffusionProcessingImg2Img.init``:

* several init images take one batch slot each: ``batch_size`` is sent as their number (A1111 sets it so
  itself, and fails when it is smaller), so the post-check expects the right count;
* inpainting fields without a ``mask`` change nothing in A1111: said in a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.image_jobs import INPAINTING_FIELDS, Img2ImgJob
from worker.translate import ResolvedNames, Translation, build_txt2img_payload


def build_img2img_payload(
    job: Img2ImgJob, names: ResolvedNames, engine_defaults: Mapping[str, Any] | None = None
) -> Translation:
    """The exact ``/sdapi/v1/img2img`` body for ``job`` (its images already checked)."""
    translation = build_txt2img_payload(job, names, engine_defaults)
    payload, warnings = translation.payload, translation.warnings
    count = len(job.init_images)
    if count > 1:
        if job.batch_size is not None and job.batch_size > count:
            warnings.append(
                f"batch_size={job.batch_size} with {count} init images: A1111 makes one image per init "
                f"image, {count} per iteration"
            )
        payload["batch_size"] = count
    if job.mask is None:
        unused = sorted(job.model_fields_set & INPAINTING_FIELDS)
        if unused:
            warnings.append(
                f"{', '.join(unused)} only apply with a mask; there is none, so A1111 ignores them"
            )
    return translation
