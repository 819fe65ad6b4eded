"""A1111 options (``/sdapi/v1/options``, ``override_settings``) this engine knows.

The engine lists every option A1111 v1.10.1 lists (``a1111_options.json``: the keys and defaults of its
``GET /options`` on a fresh data dir, recorded with ``scripts/record_a1111_transcripts.py``; output folders
relative), and keeps every value set, as A1111 does. Keys in :data:`HONOURED` change what the engine does; the
others have no effect on this engine's output: they are stored and reported, never silently lost. Unknown
keys are rejected with a 400 naming them (A1111 answers a 500 ``KeyError``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: A1111's options and their defaults, in its order (sd_model_checkpoint: None until a model is loaded)
DEFAULTS: dict[str, Any] = json.loads((Path(__file__).parent / "a1111_options.json").read_text("utf-8"))
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
        "inpainting_mask_weight",
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
