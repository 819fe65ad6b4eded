"""A1111 v1.10.1's request fields of the image endpoints and their API defaults (pure data), defined once.

``StableDiffusionImg2ImgProcessingAPI`` (the fields of ``StableDiffusionProcessingImg2Img.__init__`` plus the
API's own) and ``ExtrasBaseRequest`` in A1111's ``modules/api/models.py``, in their order; checked against the
real A1111's ``/openapi.json`` by ``tests/unit/test_contracts.py`` (recorded in
``tests/fixtures/a1111/openapi_image_fields.json`` by ``scripts/record_a1111_transcripts.py``).
"""

from __future__ import annotations

from typing import Any

from worker.a1111.txt2img_fields import TXT2IMG_FIELDS

#: the txt2img fields that img2img shares (everything before ``enable_hr``, hires being txt2img's own)
_SHARED = {
    name: TXT2IMG_FIELDS[name] for name in list(TXT2IMG_FIELDS)[: list(TXT2IMG_FIELDS).index("enable_hr")]
}

#: the API's own fields, after the processing class's, as for txt2img
_API_OWN = ("script_name", "script_args", "send_images", "save_images", "alwayson_scripts", "infotext")

#: field name → the value A1111's API uses when a request leaves it out
IMG2IMG_FIELDS: dict[str, Any] = {
    **_SHARED,
    "denoising_strength": 0.75,
    "init_images": None,
    "resize_mode": 0,
    "image_cfg_scale": None,
    "mask": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_blur": None,
    "mask_round": True,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None,
    "latent_mask": None,
    "force_task_id": None,
    "sampler_index": "Euler",
    "include_init_images": False,
    **{name: TXT2IMG_FIELDS[name] for name in _API_OWN},
}

#: ``ExtrasBaseRequest``: the fields of extra-single-image (plus ``image``) and extra-batch-images (plus
#: ``imageList``)
EXTRAS_FIELDS: dict[str, Any] = {
    "resize_mode": 0,
    "show_extras_results": True,
    "gfpgan_visibility": 0,
    "codeformer_visibility": 0,
    "codeformer_weight": 0,
    "upscaling_resize": 2,
    "upscaling_resize_w": 512,
    "upscaling_resize_h": 512,
    "upscaling_crop": True,
    "upscaler_1": "None",
    "upscaler_2": "None",
    "extras_upscaler_2_visibility": 0,
    "upscale_first": False,
}

#: A1111's names of ``inpainting_fill`` 0-3 (what the UI shows, and the infotext's "Masked content")
INPAINTING_FILL_NAMES: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")

#: upscalers every A1111 lists whatever the models folder holds (``modules/upscaler.py``)
BUILTIN_UPSCALERS: tuple[str, ...] = ("None", "Lanczos", "Nearest")
