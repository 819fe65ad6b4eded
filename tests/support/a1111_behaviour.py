"""What A1111 v1.10.1 does with a txt2img request, as plain functions: the fake A1111's generation logic.

Every rule here was measured on the real A1111 and recorded in ``tests/fixtures/a1111/`` by
``scripts/record_a1111_transcripts.py``; ``tests/worker/test_fake_transcripts.py`` replays the recording
against the fake and fails where they disagree. The quirks are reproduced on purpose, because the worker
exists to catch them: an unknown sampler silently becomes ``DPM++ 2M``, an unknown scheduler
``Automatic``, an unknown LoRA or a LoRA in the negative prompt is skipped, an unknown checkpoint or VAE
override is dropped, and an override whose key is not yet in A1111's ``opts.data`` (a fresh data dir's
``config.json`` holds almost nothing) is never restored: it sticks, and from then on it is restored, to
the value that stuck.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.fake_extensions import extension_images, extension_params
from worker.a1111.img2img_fields import IMG2IMG_FIELDS
from worker.a1111.txt2img_fields import TXT2IMG_FIELDS

if TYPE_CHECKING:
    from tests.support.fake_a1111 import FakeData

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "a1111"
VERSION = "v1.10.1"
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)[^>]*>")
_FLOAT_FIELDS = (
    "cfg_scale",
    "hr_scale",
    "denoising_strength",
    "subseed_strength",
    "eta",
    "refiner_switch_at",
)


@functools.cache
def transcript(name: str) -> Any:
    """One recorded file (``meta``, ``listings``, ``exchanges``, ``progress``), parsed once."""
    return json.loads((TRANSCRIPTS / f"{name}.json").read_text())


def parameter_defaults(kind: str = "txt2img") -> dict[str, Any]:
    """A1111's echo of an empty request: its fields and API defaults (``worker.a1111.txt2img_fields``,
    ``img2img_fields``)."""
    return copy.deepcopy(IMG2IMG_FIELDS if kind == "img2img" else TXT2IMG_FIELDS)


class A1111Failure(Exception):
    """An A1111 error response: ``status`` and the JSON ``body`` it sends."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


def exception_body(cls: str, errors: str) -> dict[str, Any]:
    """A1111's 500 body for an exception of class ``cls`` with ``str(e) == errors``."""
    return {"error": cls, "detail": "", "body": "", "errors": errors}


def http_exception_body(detail: str) -> dict[str, Any]:
    return {"error": "HTTPException", "detail": detail, "body": "", "errors": ""}


@dataclass(frozen=True)
class Sampling:
    sampler: dict[str, Any]
    schedule_label: str  # what the infotext records
    explicit_schedule: bool  # "Schedule type" also in extra_generation_params


def resolve_sampling(data: FakeData, name: str | None, scheduler: str | None) -> Sampling:
    """``sd_samplers.get_sampler_and_scheduler`` + ``fix_p_invalid_sampler_and_scheduler``, as measured."""
    samplers = {s["name"]: s for s in data.samplers}
    labels = {s["name"]: s["label"] for s in data.schedulers} | {
        s["label"]: s["label"] for s in data.schedulers
    }
    text = name or "Euler"
    suffix = None
    if text not in samplers:
        for spelling in sorted(_scheduler_spellings(data), key=len, reverse=True):
            if text.endswith(" " + spelling) and text[: -len(spelling) - 1] in samplers:
                text, suffix = text[: -len(spelling) - 1], spelling
                break
    sampler = samplers.get(text) or data.samplers[0]  # unknown names: silently samplers[0]
    requested = scheduler or (suffix and _label_of(data, suffix))
    label = labels.get(requested or "", "Automatic")  # unknown schedulers: silently Automatic
    if label == "Automatic":
        default = (sampler.get("options") or {}).get("scheduler")
        label = labels.get(default, "Automatic") if default else "Automatic"
    return Sampling(sampler=sampler, schedule_label=label, explicit_schedule=label != "Automatic")


def _scheduler_spellings(data: FakeData) -> list[str]:
    return [x for s in data.schedulers for x in (s["name"], s["label"], *(s.get("aliases") or []))]


def _label_of(data: FakeData, spelling: str) -> str | None:
    for s in data.schedulers:
        if spelling in (s["name"], s["label"], *(s.get("aliases") or [])):
            return str(s["label"])
    return None


def quote(value: Any) -> str:
    """``infotext_utils.quote``: JSON-quote a value that holds a comma, colon or newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _check_request(data: FakeData, body: dict[str, Any], kind: str = "txt2img") -> None:
    scripts = [s.lower() for s in data.scripts.get(kind, [])]
    script = body.get("script_name")
    if script and str(script).lower() not in scripts:
        raise A1111Failure(422, http_exception_body(f"Script '{script}' not found"))
    for title in body.get("alwayson_scripts") or {}:
        if str(title).lower() not in scripts:
            raise A1111Failure(422, http_exception_body(f"Script '{title}' not found"))
    if body.get("enable_hr"):
        if body.get("denoising_strength") is None:
            raise A1111Failure(
                500,
                exception_body("TypeError", "'>' not supported between instances of 'NoneType' and 'int'"),
            )
        upscaler = body.get("hr_upscaler")
        names = [u["name"] for u in data.upscalers] + [m["name"] for m in data.latent_upscale_modes]
        if upscaler and upscaler not in names:
            raise A1111Failure(500, exception_body("Exception", f"could not find upscaler named {upscaler}"))
        hr_sampler = body.get("hr_sampler_name")
        if hr_sampler and hr_sampler not in {s["name"] for s in data.samplers}:
            raise A1111Failure(500, exception_body("AssertionError", f"bad sampler name: {hr_sampler}"))
    refiner = body.get("refiner_checkpoint")
    if refiner and str(refiner).lower() != "none" and data.checkpoint_for(str(refiner)) is None:
        raise A1111Failure(500, exception_body("Exception", f"Could not find checkpoint with name {refiner}"))


def apply_overrides(data: FakeData, overrides: dict[str, Any]) -> None:
    """Set ``override_settings`` like ``process_images``: an unknown checkpoint is dropped silently, an
    unknown key fails with A1111's ``KeyError`` (after the keys before it were set)."""
    wanted = overrides.get("sd_model_checkpoint")
    if wanted is not None and data.checkpoint_for(str(wanted)) is None:
        overrides = {k: v for k, v in overrides.items() if k != "sd_model_checkpoint"}
    for key, value in overrides.items():
        if key not in data.options and value is not None:
            raise A1111Failure(500, exception_body("KeyError", repr(key)))
        data.options[key] = value
        data.opts_data_keys.add(key)  # opts.set puts the key in opts.data: restored from now on


def _loaded_checkpoint(data: FakeData) -> dict[str, Any] | None:
    ckpt = data.checkpoint_for(data.options.get("sd_model_checkpoint")) or (
        data.checkpoints[0] if data.checkpoints else None
    )
    if ckpt is not None and not ckpt.get("sha256"):
        known = data.hashes.get("checkpoints", {}).get(ckpt["filename"].rsplit("/", 1)[-1])
        if known:  # A1111 hashes a checkpoint when it loads it, then lists it with its hash
            short = known[:10]
            ckpt.update(sha256=known, hash=short, title=f"{ckpt['title']} [{short}]")
    if ckpt is not None:
        data.options["sd_model_checkpoint"] = ckpt["title"]
    return ckpt


def _vae(data: FakeData) -> tuple[str | None, str | None]:
    wanted = data.options.get("sd_vae") or "Automatic"
    names = {v["model_name"] for v in data.vaes}
    if wanted in ("Automatic", "None") or wanted not in names:
        return None, None  # unknown: "Couldn't find VAE named ...; using None instead"
    return wanted, data.hashes.get("vae", {}).get(wanted)


def generate(
    data: FakeData, body: dict[str, Any], cond_cache: list[Any], kind: str = "txt2img"
) -> dict[str, Any]:
    """The txt2img response A1111 would send, with ``images`` as ``{"width", "height"}`` entries.

    ``cond_cache`` is A1111's one-entry conditioning cache (a repeated prompt drops ``TI hashes``).

    Raises:
        A1111Failure: the status and body A1111 answers with.
    """
    _check_request(data, body, kind)
    if kind == "img2img":
        from tests.support.a1111_image_behaviour import check_init_images

        check_init_images(body)
    overrides = dict(body.get("override_settings") or {})
    stored = {
        key: data.options[key] for key in overrides if key in data.opts_data_keys and key in data.options
    }
    try:
        apply_overrides(data, overrides)
        return _generate(data, body, cond_cache, kind)
    finally:
        if body.get("override_settings_restore_afterwards", True):
            data.options.update(stored)


def _generate(data: FakeData, body: dict[str, Any], cond_cache: list[Any], kind: str) -> dict[str, Any]:
    params = {**parameter_defaults(kind), **body}
    for name in _FLOAT_FIELDS:
        if isinstance(body.get(name), int) and not isinstance(body.get(name), bool):
            params[name] = float(body[name])
    prompt, negative = str(params["prompt"] or ""), str(params["negative_prompt"] or "")
    steps, cfg = int(params["steps"]), float(params["cfg_scale"])
    width, height = int(params["width"]), int(params["height"])
    count = int(params["batch_size"] or 1) * int(params["n_iter"] or 1)
    seed, subseed = int(params["seed"]), int(params["subseed"])
    if seed == -1:
        seed = _random_seed()
    if subseed == -1:
        subseed = _random_seed()
    strength = float(params["subseed_strength"] or 0)
    seeds = [seed] * count if strength > 0 else [seed + i for i in range(count)]
    subseeds = [subseed + i for i in range(count)]

    sampling = resolve_sampling(data, params["sampler_name"] or params["sampler_index"], params["scheduler"])
    ckpt = _loaded_checkpoint(data)
    model_name = ckpt["filename"].rsplit("/", 1)[-1].rsplit(".", 1)[0] if ckpt else None
    model_hash = ckpt["sha256"][:10] if ckpt and ckpt.get("sha256") else None
    vae_name, vae_hash = _vae(data)
    clip_skip = int(data.options.get("CLIP_stop_at_last_layers") or 1)
    ensd = int(data.options.get("eta_noise_seed_delta") or 0)
    uses_ensd = ensd != 0 and (sampling.sampler.get("options") or {}).get("uses_ensd") == "True"

    extra: dict[str, Any] = {}
    made = count
    if kind == "img2img":
        from tests.support.a1111_image_behaviour import check_init_images, img2img_extra

        extra = img2img_extra(params)
        made = check_init_images(params) * int(params["n_iter"] or 1)
        if not params["include_init_images"]:
            params.update(init_images=None, mask=None)
    hires = bool(params.get("enable_hr"))
    out_w, out_h = width, height
    if hires:
        extra["Denoising strength"] = params["denoising_strength"]
        hr_sampler = params["hr_sampler_name"]
        if hr_sampler and hr_sampler != sampling.sampler["name"]:
            extra["Hires sampler"] = hr_sampler
        extra.update({"Hires prompt": None, "Hires negative prompt": None})
        hr_label = _label_of(data, params["hr_scheduler"]) if params["hr_scheduler"] else None
        extra["Hires schedule type"] = hr_label if hr_label and hr_label != "Automatic" else None
        if params["hr_resize_x"] or params["hr_resize_y"]:
            out_w, out_h = int(params["hr_resize_x"] or width), int(params["hr_resize_y"] or height)
            extra["Hires resize"] = f"{params['hr_resize_x']}x{params['hr_resize_y']}"
        else:
            scale = float(params["hr_scale"])
            out_w, out_h = int(width * scale), int(height * scale)
            extra["Hires upscale"] = scale
        if params["hr_second_pass_steps"]:
            extra["Hires steps"] = params["hr_second_pass_steps"]
        if params["hr_upscaler"]:
            extra["Hires upscaler"] = params["hr_upscaler"]

    loras = {lora["name"]: lora for lora in data.loras} | {lora["alias"]: lora for lora in data.loras}
    lora_hashes: dict[str, str] = {}
    if not params["disable_extra_networks"]:
        for match in _LORA_TAG.finditer(prompt):  # the negative prompt's tags are never applied
            lora = loras.get(match.group(1))
            if lora is not None:
                short = data.hashes.get("loras", {}).get(lora["name"], "")
                if short:
                    lora_hashes[match.group(1).translate(str.maketrans("", "", ":,"))] = short
    if lora_hashes:
        extra["Lora hashes"] = ", ".join(f"{name}: {short}" for name, short in lora_hashes.items())
    cond_key = (prompt, negative, steps, clip_skip, model_hash, tuple(lora_hashes))
    if cond_cache[:1] != [cond_key]:  # A1111 re-encodes (and re-collects TI hashes) only on a change
        used = _embeddings_in(data, prompt + "\n" + negative)
        if used:
            extra["TI hashes"] = ", ".join(f"{name}: {short}" for name, short in used.items())
    cond_cache[:] = [cond_key]
    extra.update(extension_params(data.scripts, body))
    if sampling.explicit_schedule:
        extra["Schedule type"] = sampling.schedule_label

    def infotext(index: int) -> str:
        fields: dict[str, Any] = {
            "Steps": steps,
            "Sampler": sampling.sampler["name"],
            "Schedule type": sampling.schedule_label,
            "CFG scale": cfg,
            "Seed": seeds[index],
            "Face restoration": "CodeFormer" if params["restore_faces"] else None,
            "Size": f"{width}x{height}",
            "Model hash": model_hash,
            "Model": model_name,
            "VAE hash": vae_hash,
            "VAE": vae_name,
            "Variation seed": subseeds[index] if strength > 0 else None,
            "Variation seed strength": strength if strength > 0 else None,
            "Denoising strength": extra.get("Denoising strength"),
            "Clip skip": clip_skip if clip_skip > 1 else None,
            "ENSD": ensd if uses_ensd else None,
            "Tiling": "True" if params["tiling"] else None,
            **extra,
            "Version": VERSION,
        }
        text = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None)
        negative_line = f"\nNegative prompt: {negative}" if negative else ""
        return f"{prompt}{negative_line}\n{text}".strip()

    info = {
        "prompt": prompt,
        "all_prompts": [prompt] * count,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * count,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": params["subseed_strength"],
        "width": width,
        "height": height,
        "sampler_name": sampling.sampler["name"],
        "cfg_scale": cfg,
        "steps": steps,
        "batch_size": made // int(params["n_iter"] or 1),
        "restore_faces": bool(params["restore_faces"]),
        "face_restoration_model": "CodeFormer" if params["restore_faces"] else None,
        "sd_model_name": model_name,
        "sd_model_hash": model_hash,
        "sd_vae_name": vae_name,
        "sd_vae_hash": vae_hash,
        "seed_resize_from_w": params["seed_resize_from_w"],
        "seed_resize_from_h": params["seed_resize_from_h"],
        "denoising_strength": params["denoising_strength"],
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": [infotext(i) for i in range(made)],
        "styles": params["styles"] or [],
        "job_timestamp": None,  # filled by the server
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
    }
    images = [{"width": out_w, "height": out_h}] * made if params["send_images"] else []
    images += extension_images(data.scripts, body, {"width": width, "height": height}) if images else []
    return {"images": images, "parameters": params, "info": info}


def _embeddings_in(data: FakeData, text: str) -> dict[str, str]:
    loaded = data.embeddings.get("loaded") or {}
    found = {}
    for name in loaded:
        if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text):
            found[name] = data.hashes.get("embeddings", {}).get(name, "")
    return {name: short for name, short in found.items() if short}


def _random_seed() -> int:
    import random

    return random.randint(0, 2**32 - 1)
