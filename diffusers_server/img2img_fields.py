"""A1111 v1.10.1's img2img request fields and their API defaults, in its order (pure data).

``StableDiffusionImg2ImgProcessingAPI`` (``StableDiffusionProcessingImg2Img`` in the real A1111's
``/openapi.json``, read 2026-12-06): the embedded engine's ``Img2ImgRequest`` is held to it by
tests/engine/test_img2img.py. The engine may not import the worker's job path
(``worker/a1111/img2img_fields.py``, docs/architecture.md), so this copy is held equal to that one by
tests/unit/test_image_contracts.py.
"""

from __future__ import annotations

from typing import Any

#: field name -> the value A1111's API uses when a request leaves it out
IMG2IMG_FIELDS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": None,
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": None,
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": None,
    "tiling": None,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": None,
    "denoising_strength": 0.75,
    "s_min_uncond": None,
    "s_churn": None,
    "s_tmax": None,
    "s_tmin": None,
    "s_noise": None,
    "override_settings": None,
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "firstpass_image": None,
    "comments": None,
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
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "infotext": None,
}
