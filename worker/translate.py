"""Job → A1111 ``/sdapi/v1/txt2img`` payload: pure functions, no I/O.

The rule is "send only what the user set": A1111's own defaults apply to everything else, exactly
as if the caller had talked to A1111 directly. The exceptions are deliberate and few:

* ``sampler_name`` is always sent (the resolved engine name), so the effective sampler is known;
* the engine settings the worker manages (checkpoint, clip skip, VAE) and every setting an earlier job
  overrode are sent on every job, defaults included when the job leaves them unset (the caller passes
  them: ``worker.settings_baseline``), with ``override_settings_restore_afterwards=true``: A1111 does not
  restore an override whose key is missing from its ``config.json``, so otherwise one job's clip skip or
  VAE would silently apply to every later job;
* ``save_images=false`` and ``send_images=true``: the worker returns images, it never writes them
  on the engine's disk;
* ``denoising_strength`` when hires is on (A1111 fails with a 500 without it): 0.7, A1111's UI
  default, unless the user gave one.

Names (checkpoint, sampler, LoRAs...) arrive already resolved against the engine's own lists by
``worker.preflight``; this module only places them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.schema import A1111_HIRES_FIELDS, NATIVE_FIELDS, SYNONYMS, Txt2ImgJob

HIRES_DEFAULT_DENOISING = 0.7

#: A1111 extra-network tags that name a LoRA (``lyco`` is an alias A1111 keeps).
LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)(?::([^:>]*))?[^>]*>", re.IGNORECASE)

# Fields the translation places itself; everything else the user set passes through unchanged.
_HANDLED = (
    NATIVE_FIELDS
    | A1111_HIRES_FIELDS
    | {"override_settings", "override_settings_restore_afterwards", "send_images", "save_images"}
    | {"denoising_strength", "refiner_checkpoint"}
    | {spelling for spellings in SYNONYMS.values() for spelling in spellings}
)


@dataclass(frozen=True)
class ResolvedNames:
    """Every model and sampler name of a job, as the engine itself spells it."""

    sampler: str
    scheduler: str | None = None
    checkpoint_title: str | None = None
    vae: str | None = None
    loras: tuple[tuple[str, float], ...] = ()  # LoRAs to add as prompt tags: (engine name, weight)
    hr_sampler: str | None = None
    hr_scheduler: str | None = None
    hr_checkpoint_title: str | None = None
    hr_upscaler: str | None = None
    refiner_checkpoint_title: str | None = None
    #: LoRA tags to rewrite in the prompts: (name the user wrote, engine name of its converted file)
    lora_renames: tuple[tuple[str, str], ...] = ()


@dataclass
class Translation:
    payload: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def format_weight(weight: float) -> str:
    """``1.0`` → ``"1"``, ``0.80`` → ``"0.8"``: the way A1111's UI writes weights."""
    return f"{weight:.4f}".rstrip("0").rstrip(".") or "0"


def prompt_lora_tags(prompt: str) -> dict[str, str | None]:
    """LoRA names carried by a prompt's ``<lora:name:weight>`` tags → their weight text."""
    return {match.group(1).strip(): match.group(2) for match in LORA_TAG.finditer(prompt)}


def rename_lora_tags(prompt: str, renames: tuple[tuple[str, str], ...]) -> str:
    """Point ``<lora:old:w>`` tags at another LoRA (a converted file), keeping weights and extra fields."""
    if not renames or not prompt:
        return prompt
    table = dict(renames)

    def swap(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name not in table:
            return match.group(0)
        start, end = match.span(1)
        whole = match.group(0)
        return whole[: start - match.start()] + table[name] + whole[end - match.start() :]

    return LORA_TAG.sub(swap, prompt)


def add_lora_tags(prompt: str, loras: tuple[tuple[str, float], ...]) -> tuple[str, list[str]]:
    """Append ``<lora:name:weight>`` for each LoRA the prompt does not already carry."""
    present = {name.lower(): weight for name, weight in prompt_lora_tags(prompt).items()}
    warnings: list[str] = []
    tags = []
    for name, weight in loras:
        if name.lower() in present:
            written = present[name.lower()]
            if written is not None and _weight_differs(written, weight):
                warnings.append(
                    f"LoRA {name!r} is in the prompt with weight {written} and in loras with "
                    f"{format_weight(weight)}; the prompt's tag was kept"
                )
            continue
        tags.append(f"<lora:{name}:{format_weight(weight)}>")
    if not tags:
        return prompt, warnings
    separator = " " if prompt and not prompt.endswith((" ", "\n")) else ""
    return prompt + separator + " ".join(tags), warnings


def _weight_differs(written: str, weight: float) -> bool:
    try:
        return abs(float(written) - weight) > 1e-6
    except ValueError:
        return True


def build_txt2img_payload(
    job: Txt2ImgJob, names: ResolvedNames, engine_defaults: Mapping[str, Any] | None = None
) -> Translation:
    """The exact ``/sdapi/v1/txt2img`` body for ``job`` (see the module docstring for the rules).

    Args:
        engine_defaults: ``worker.settings_baseline.SettingsBaseline.defaults()``: sent for each setting
            the job leaves unset.
    """
    payload, warnings = _generation_fields(job, names)
    warnings += _place_overrides(job, names, engine_defaults or {}, payload)
    warnings += _place_hires(job, names, payload)
    warnings += _place_image_flags(job, payload)
    return Translation(payload=payload, warnings=warnings)


def _generation_fields(job: Txt2ImgJob, names: ResolvedNames) -> tuple[dict[str, Any], list[str]]:
    """Prompts (LoRA tags added), the resolved sampler, what the user set, and the fields passed through."""
    prompt, warnings = add_lora_tags(rename_lora_tags(job.prompt, names.lora_renames), names.loras)
    payload: dict[str, Any] = {"prompt": prompt, "sampler_name": names.sampler}
    if job.negative_prompt is not None:
        payload["negative_prompt"] = rename_lora_tags(job.negative_prompt, names.lora_renames)
    if names.scheduler:
        payload["scheduler"] = names.scheduler
    for name in ("steps", "cfg_scale", "width", "height", "seed", "batch_size", "n_iter"):
        value = getattr(job, name)
        if value is not None:
            payload[name] = value
    for name in sorted(job.model_fields_set - _HANDLED):
        payload.setdefault(name, getattr(job, name))
    if job.refiner_checkpoint is not None:
        payload["refiner_checkpoint"] = names.refiner_checkpoint_title or job.refiner_checkpoint
    return payload, warnings


def _place_overrides(
    job: Txt2ImgJob, names: ResolvedNames, engine_defaults: Mapping[str, Any], payload: dict[str, Any]
) -> list[str]:
    """``override_settings``: the job's own, the resolved checkpoint/clip skip/VAE, then the defaults."""
    overrides = dict(job.override_settings or {})
    if names.checkpoint_title:
        overrides["sd_model_checkpoint"] = names.checkpoint_title
    if job.clip_skip is not None:
        overrides["CLIP_stop_at_last_layers"] = job.clip_skip
    if names.vae:
        overrides["sd_vae"] = names.vae
    for key, value in engine_defaults.items():
        overrides.setdefault(key, value)
    if overrides:
        payload["override_settings"] = overrides
    payload["override_settings_restore_afterwards"] = True
    if job.override_settings_restore_afterwards is False:
        return [
            "override_settings_restore_afterwards=false was ignored: a job never changes the engine's "
            "settings for later jobs (name the checkpoint, clip_skip or vae in each job instead)"
        ]
    return []


def _place_image_flags(job: Txt2ImgJob, payload: dict[str, Any]) -> list[str]:
    """The worker returns images and never saves them on the engine's disk, whatever the job says."""
    warnings = []
    if job.save_images:
        warnings.append("save_images=true was ignored: the worker returns images and never saves them")
    if job.send_images is False:
        warnings.append("send_images=false was ignored: the worker always returns the images")
    payload["save_images"] = False
    payload["send_images"] = True
    return warnings


def _place_hires(job: Txt2ImgJob, names: ResolvedNames, payload: dict[str, Any]) -> list[str]:
    """Native ``hires`` and A1111 ``enable_hr``/``hr_*`` fields → A1111's hires fields."""
    hires = job.hires_choice
    if job.denoising_strength is not None:
        payload["denoising_strength"] = job.denoising_strength
    if not hires.enabled:
        if job.enable_hr is not None:
            payload["enable_hr"] = False
        return []
    payload["enable_hr"] = True
    values = {
        "hr_scale": hires.scale,
        "hr_resize_x": hires.resize_x,
        "hr_resize_y": hires.resize_y,
        "hr_second_pass_steps": hires.steps,
        "hr_prompt": _renamed(hires.prompt, names),
        "hr_negative_prompt": _renamed(hires.negative_prompt, names),
        "hr_upscaler": names.hr_upscaler,
        "hr_sampler_name": names.hr_sampler,
        "hr_scheduler": names.hr_scheduler,
        "hr_checkpoint_name": names.hr_checkpoint_title,
    }
    payload.update({key: value for key, value in values.items() if value is not None})
    if hires.denoising_strength is None:
        payload["denoising_strength"] = HIRES_DEFAULT_DENOISING
        return [
            f"hires is on without denoising_strength: {HIRES_DEFAULT_DENOISING} (A1111's default) was used"
        ]
    payload["denoising_strength"] = hires.denoising_strength
    return []


def _renamed(text: str | None, names: ResolvedNames) -> str | None:
    return rename_lora_tags(text, names.lora_renames) if text else text
