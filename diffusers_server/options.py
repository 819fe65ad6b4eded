"""A1111 options (``/sdapi/v1/options``, ``override_settings``) this engine knows.

Keys in :data:`HONOURED` change what the engine does; the others are A1111 options that clients commonly
send and that have no effect on this engine's output: they are stored and reported, never silently lost.
Unknown keys are rejected with a 400 naming them (A1111 answers a 500 ``KeyError``).
"""

from __future__ import annotations

import math
from typing import Any

DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,
    "sd_checkpoints_limit": 1,
    "sd_checkpoints_keep_in_cpu": True,
    "sd_checkpoint_cache": 0,
    "CLIP_stop_at_last_layers": 1,
    "sdxl_clip_l_skip": False,
    "sd_vae": "Automatic",
    "sd_vae_overrides_per_model_preferences": True,
    "samples_format": "png",
    "jpeg_quality": 80,
    "webp_lossless": False,
    "enable_pnginfo": True,
    "samples_save": True,
    "grid_save": True,
    "return_grid": True,
    "grid_only_if_multiple": True,
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
    "add_version_to_infotext": True,
    "add_vae_name_to_info": True,
    "add_vae_hash_to_info": True,
    "eta_noise_seed_delta": 0,
    "randn_source": "GPU",
    "emphasis": "Original",
    "comma_padding_backtrack": 20,
    "use_old_scheduling": False,
    "enable_prompt_comments": True,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN",
    "lora_preferred_name": "Alias from file",
    # A1111's LoRA in the forward pass instead of merged (no weight backup): what peft does here anyway.
    "lora_functional": False,
    "lora_add_hashes_to_infotext": True,
    "textual_inversion_add_hashes_to_infotext": True,
    "extra_networks_default_multiplier": 1.0,
    "sd_lora": "None",
    "sd_hypernetwork": "None",
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "tiling": False,
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    "s_churn": 0.0,
    "s_min_uncond": 0.0,
    "s_noise": 1.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "always_discard_next_to_last_sigma": False,
    "sgm_noise_multiplier": False,
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
    "beta_dist_alpha": 0.6,
    "beta_dist_beta": 0.6,
    "sdxl_crop_top": 0,
    "sdxl_crop_left": 0,
    "save_images_add_number": True,
    "outdir_samples": "",
    "api_enable_requests": True,
    "api_forbid_local_requests": True,
    "api_useragent": "",
    # img2img (diffusers_server.img2img)
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "img2img_background_color": "#ffffff",
    "overlay_inpaint": True,
    "sd_vae_encode_method": "Full",
    "img2img_extra_noise": 0.0,
    "img2img_color_correction": False,
    "upscaler_for_img2img": None,
    "inpainting_mask_weight": 1.0,
}
HONOURED = frozenset(
    {
        "sd_model_checkpoint",
        "CLIP_stop_at_last_layers",
        "sdxl_clip_l_skip",
        "sd_vae",
        "samples_format",
        "jpeg_quality",
        "webp_lossless",
        "enable_pnginfo",
        "add_model_hash_to_info",
        "add_model_name_to_info",
        "add_version_to_infotext",
        "add_vae_name_to_info",
        "add_vae_hash_to_info",
        "emphasis",
        "comma_padding_backtrack",
        "use_old_scheduling",
        "enable_prompt_comments",
        "lora_add_hashes_to_infotext",
        "textual_inversion_add_hashes_to_infotext",
        # sampling (diffusers_server.sampling)
        "eta_noise_seed_delta",
        "randn_source",
        "tiling",
        "eta_ddim",
        "eta_ancestral",
        "s_churn",
        "s_min_uncond",
        "s_noise",
        "s_tmin",
        "s_tmax",
        "sigma_min",
        "sigma_max",
        "rho",
        "always_discard_next_to_last_sigma",
        "sgm_noise_multiplier",
        "uni_pc_variant",
        "uni_pc_skip_type",
        "uni_pc_order",
        "uni_pc_lower_order_final",
        "beta_dist_alpha",
        "beta_dist_beta",
        "sdxl_crop_top",
        "sdxl_crop_left",
        "img2img_fix_steps",
        "initial_noise_multiplier",
        "img2img_background_color",
        "overlay_inpaint",
    }
)
# Non-default values of these would change the image in A1111; this engine cannot follow, so it refuses them.
REFUSED_UNLESS_DEFAULT = frozenset(
    {
        "sd_lora",
        "sd_hypernetwork",
        "face_restoration",
        # img2img: TAESD encoding, extra noise, colour correction and an upscaler for img2img resizes
        "sd_vae_encode_method",
        "img2img_extra_noise",
        "img2img_color_correction",
        "upscaler_for_img2img",
    }
)
# Options with a closed set of values (A1111's radio buttons) this engine implements.
CHOICES: dict[str, tuple[str, ...]] = {
    # "NV" (A1111's numpy Philox imitation of NVIDIA's generator) is not implemented.
    "randn_source": ("GPU", "CPU"),
    "uni_pc_variant": ("bh1", "bh2"),
    "uni_pc_skip_type": ("time_uniform", "time_quadratic", "logSNR"),
}
SAMPLES_FORMATS = ("png", "jpg", "jpeg", "webp")
#: A1111's ``emphasis`` values (what each does: ``prompts.py``).
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


class OptionError(ValueError):
    """An unknown option key or a value this engine cannot honour."""


def validate(values: dict[str, Any]) -> list[str]:
    """Check keys/values; return notes for accepted keys that have no effect on this engine."""
    unknown = sorted(k for k in values if k not in DEFAULTS)
    if unknown:
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)}; this engine knows: {', '.join(sorted(DEFAULTS))}"
        )
    for key, value in values.items():
        _check_type(key, value)
    for key in REFUSED_UNLESS_DEFAULT & values.keys():
        if values[key] not in (DEFAULTS[key], None, "None"):
            raise OptionError(
                f"option {key}={values[key]!r} is not supported by this engine (only {DEFAULTS[key]!r})"
            )
    for key, choices in CHOICES.items():
        if key in values and values[key] not in choices:
            raise OptionError(f"option {key}={values[key]!r} is not one of {', '.join(choices)}")
    _check_ranges(values)
    ignored = sorted(k for k in values if k not in HONOURED and k not in REFUSED_UNLESS_DEFAULT)
    return [f"option {k} is stored but has no effect on this engine" for k in ignored]


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_ranges(values: dict[str, Any]) -> None:
    """The options whose valid values are a range or a set this engine implements."""
    order = values.get("uni_pc_order")
    if order is not None and not _is_int_in(order, 1, 50):
        raise OptionError(f"uni_pc_order must be an integer 1..50, got {order!r}")
    fmt = values.get("samples_format")
    if fmt is not None and str(fmt).lower() not in SAMPLES_FORMATS:
        raise OptionError(f"samples_format {fmt!r} is not one of {', '.join(SAMPLES_FORMATS)}")
    if values.get("emphasis") not in (None, *EMPHASIS_MODES):
        raise OptionError(f"emphasis {values['emphasis']!r} is not one of {', '.join(EMPHASIS_MODES)}")
    clip = values.get("CLIP_stop_at_last_layers")
    if clip is not None and not _is_int_in(clip, 1, 12):
        raise OptionError(f"CLIP_stop_at_last_layers must be an integer 1..12, got {clip!r}")


def _check_type(key: str, value: Any) -> None:
    """A value of the option's own type (numbers finite, booleans not numbers); None keeps the default."""
    default = DEFAULTS[key]
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (isinstance(value, int) or not isinstance(default, int) or float(value).is_integer())
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        kind = type(default).__name__
        raise OptionError(f"option {key} must be a {kind} like its default {default!r}, got {value!r}")
