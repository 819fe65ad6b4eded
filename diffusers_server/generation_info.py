"""What a generation reports: A1111's infotext parameters (in its order), the ``info`` json, the seeds.

Mirrors A1111 v1.10's ``create_infotext`` and ``Processed.js``: keys, order and which ones are left out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .models.files import CheckpointInfo, HashCache
from .samplers import ResolvedSampler
from .sampling import run
from .sampling.schedules import ScheduleOptions
from .schemas import Txt2ImgRequest
from .validation import PreparedRequest

VERSION_TEXT = f"diffusers-server-{__version__}"
_HR_CALLABLES = ("Hires prompt", "Hires negative prompt")
#: request field, infotext key, A1111's default of the option that overrides it
_SIGMA_FIELDS = (
    ("s_churn", "Sigma churn", 0.0),
    ("s_tmin", "Sigma tmin", 0.0),
    ("s_tmax", "Sigma tmax", 0.0),
    ("s_noise", "Sigma noise", 1.0),
)


def _random_seed(value: int | None) -> int:
    return random.randrange(4294967294) if value is None or value == -1 else int(value)


@dataclass(frozen=True)
class Seeds:
    """A request's seeds for every image: A1111 gives image i ``seed + i`` (or, with a variation seed,
    every image the seed and the subseeds count up)."""

    seed: int
    subseed: int
    variation: float
    all_seeds: list[int]
    all_subseeds: list[int]
    resize_w: int
    resize_h: int

    @classmethod
    def of(cls, req: Txt2ImgRequest) -> Seeds:
        images = int(req.batch_size or 1) * int(req.n_iter or 1)
        seed, subseed = _random_seed(req.seed), _random_seed(req.subseed)
        variation = float(req.subseed_strength or 0)
        return cls(
            seed,
            subseed,
            variation,
            [seed + (i if variation == 0 else 0) for i in range(images)],
            [subseed + i for i in range(images)],
            int(req.seed_resize_from_w or 0),
            int(req.seed_resize_from_h or 0),
        )


def sampling_options(req: Txt2ImgRequest, opts: dict[str, Any]) -> run.SamplingOptions:
    """The request's sampler fields over A1111's options (A1111's ``fill_fields_from_opts`` and
    ``Sampler.initialize``: a non-default option wins over the request and goes into the infotext)."""
    sigma_options: dict[str, float] = {}
    values: dict[str, float] = {}
    for field_name, key, default in _SIGMA_FIELDS:
        option = float(opts[field_name])
        requested = getattr(req, field_name)
        values[field_name] = (
            option if option != default else float(requested if requested is not None else option)
        )
        if option != default:
            sigma_options[key] = option if field_name != "s_tmax" or option else float("inf")
    return run.SamplingOptions(
        eta=req.eta,
        eta_ancestral=float(opts["eta_ancestral"]),
        eta_ddim=float(opts["eta_ddim"]),
        s_churn=values["s_churn"],
        s_tmin=values["s_tmin"],
        s_tmax=values["s_tmax"],
        s_noise=values["s_noise"],
        s_min_uncond=float(req.s_min_uncond if req.s_min_uncond is not None else opts["s_min_uncond"]),
        sigma_options=sigma_options,
        sgm_noise_multiplier=bool(opts["sgm_noise_multiplier"]),
        uni_pc_variant=str(opts["uni_pc_variant"]),
        uni_pc_skip_type=str(opts["uni_pc_skip_type"]),
        uni_pc_order=int(opts["uni_pc_order"]),
        uni_pc_lower_order_final=bool(opts["uni_pc_lower_order_final"]),
        schedule=ScheduleOptions.from_options(opts),
    )


def uses_ensd(sampler: ResolvedSampler, sampling: run.SamplingOptions) -> bool:
    """A1111 ``is_sampler_using_eta_noise_seed_delta``: ancestral samplers with a non-zero eta."""
    eta = sampling.eta
    if eta is None:
        eta = sampling.eta_ddim if sampler.sampler.family == "timesteps" else sampling.eta_ancestral
    return eta != 0 and bool(sampler.sampler.options.get("uses_ensd"))


@dataclass(frozen=True)
class RunFacts:
    """What the infotext and ``info`` report about one generation, gathered before sampling."""

    prepared: PreparedRequest
    info: CheckpointInfo
    sampler: ResolvedSampler
    seeds: Seeds
    vae_path: Path | None
    vae_hash: str | None
    clip_stop: int
    tiling: bool
    ensd: int
    #: "Lora hashes" / "TI hashes" (when the options ask for them)
    network_hashes: dict[str, Any]
    #: an inpainting checkpoint: its image conditioning is used (A1111's ``is_using_inpainting_conditioning``)
    inpainting_conditioning: bool = False
    #: instruct-pix2pix's ``image_cfg_scale`` (None for every other checkpoint, as A1111 drops it)
    image_cfg_scale: float | None = None

    @property
    def hires_params(self) -> dict[str, Any]:
        """The second pass's infotext keys: the hires fix's, or img2img's (its "Denoising strength" on)."""
        if self.prepared.img2img_params is not None:
            return self.prepared.img2img_params
        hr = self.prepared.hires
        return {} if hr is None else {"Denoising strength": hr.denoising_strength, **hr.params}


def network_hashes(
    opts: dict[str, Any],
    prepared: PreparedRequest,
    hashes: HashCache,
    embedding_files: dict[str, Path],
    used_embeddings: list[str],
) -> dict[str, Any]:
    """A1111's "Lora hashes" (kohya addnet hashes) and "TI hashes" infotext keys."""
    all_loras = list(prepared.loras)
    if prepared.hires is not None:
        first = {lo.name for lo, _, _ in prepared.loras}
        all_loras += [use for use in prepared.hires.loras if use[0].name not in first]
    found: dict[str, Any] = {}
    if opts["lora_add_hashes_to_infotext"] and all_loras:
        found["Lora hashes"] = ", ".join(
            f"{lo.name}: {hashes.addnet(lo.filename)[:12]}" for lo, _, _ in all_loras
        )
    if opts["textual_inversion_add_hashes_to_infotext"] and used_embeddings:
        found["TI hashes"] = ", ".join(
            f"{n}: {hashes.sha256(embedding_files[n])[:12]}" for n in used_embeddings
        )
    return found


def infotext_params(facts: RunFacts, opts: dict[str, Any], sampling: run.SamplingOptions) -> dict[str, Any]:
    """The infotext keys shared by every image of the request, in A1111's ``create_infotext`` order.

    "Denoising strength" sits before "Clip skip"; the other hires keys come from extra_generation_params
    (inserted at init, so before "Lora hashes"/"TI hashes"). ``Seed`` and ``Variation seed`` are per image.
    """
    req, info, seeds = facts.prepared.req, facts.info, facts.seeds
    width, height = facts.prepared.size
    hr_extra = facts.hires_params
    vae_path = facts.vae_path
    return {
        "Steps": facts.prepared.steps,
        "Sampler": facts.sampler.sampler.name,
        "Schedule type": facts.sampler.schedule.label,
        "CFG scale": req.cfg_scale if req.cfg_scale is not None else 7.0,
        "Image CFG scale": facts.image_cfg_scale,
        "Seed": None,
        "Size": f"{width}x{height}",
        "Model hash": info.shorthash if opts["add_model_hash_to_info"] else None,
        "Model": info.name_for_extra if opts["add_model_name_to_info"] else None,
        "VAE hash": facts.vae_hash if opts["add_vae_hash_to_info"] else None,
        "VAE": vae_path.stem if vae_path and opts["add_vae_name_to_info"] else None,
        "Variation seed": None,
        "Variation seed strength": seeds.variation if seeds.variation != 0 else None,
        "Seed resize from": (
            f"{seeds.resize_w}x{seeds.resize_h}" if seeds.resize_w > 0 and seeds.resize_h > 0 else None
        ),
        "Denoising strength": hr_extra.get("Denoising strength"),
        "Conditional mask weight": opts["inpainting_mask_weight"] if facts.inpainting_conditioning else None,
        "Clip skip": facts.clip_stop if facts.clip_stop > 1 else None,
        "ENSD": facts.ensd if facts.ensd != 0 and uses_ensd(facts.sampler, sampling) else None,
        "RNG": opts["randn_source"] if opts["randn_source"] != "GPU" else None,
        "Tiling": "True" if facts.tiling else None,
        **hr_extra,
        **facts.network_hashes,
    }


def image_params(
    params: dict[str, Any], facts: RunFacts, n: int, sampler_extra: dict[str, Any], with_version: bool
) -> dict[str, Any]:
    """The infotext keys of image ``n``: its seed, its variation seed, the sampler's own keys."""
    seeds = facts.seeds
    return {
        **params,
        "Seed": seeds.all_seeds[n],
        "Variation seed": seeds.all_subseeds[n] if seeds.variation != 0 else None,
        **sampler_extra,
        "Version": VERSION_TEXT if with_version else None,
    }


def info_json(
    facts: RunFacts,
    params: dict[str, Any],
    sampler_extra: dict[str, Any],
    infotexts: list[str],
    job_timestamp: str,
    interrupted: bool,
) -> dict[str, Any]:
    """A1111's ``Processed.js()``: the response's ``info``, one entry per image actually made."""
    req, seeds = facts.prepared.req, facts.seeds
    width, height = facts.prepared.size
    count = len(infotexts)
    return {
        "prompt": req.prompt or "",
        "all_prompts": [req.prompt or ""] * count,
        "negative_prompt": req.negative_prompt or "",
        "all_negative_prompts": [req.negative_prompt or ""] * count,
        "seed": seeds.seed,
        "all_seeds": seeds.all_seeds[:count],
        "subseed": seeds.subseed,
        "all_subseeds": seeds.all_subseeds[:count],
        "subseed_strength": req.subseed_strength or 0,
        "width": width,
        "height": height,
        "sampler_name": facts.sampler.sampler.name,
        "cfg_scale": params["CFG scale"],
        "steps": facts.prepared.steps,
        "batch_size": int(req.batch_size or 1),
        "restore_faces": bool(req.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": facts.info.name_for_extra,
        "sd_model_hash": facts.info.shorthash,
        "sd_vae_name": facts.vae_path.stem if facts.vae_path else None,
        "sd_vae_hash": facts.vae_hash,
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": req.denoising_strength,
        "extra_generation_params": {
            "Schedule type": facts.sampler.schedule.label,
            # A1111 serialises its "Hires prompt" callables as null.
            **{k: None if k in _HR_CALLABLES else v for k, v in facts.hires_params.items()},
            **facts.network_hashes,
            **sampler_extra,
        },
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": req.styles or [],
        "job_timestamp": job_timestamp,
        "clip_skip": facts.clip_stop,
        "is_using_inpainting_conditioning": facts.inpainting_conditioning,
        "version": VERSION_TEXT,
        "interrupted": interrupted,
        "warnings": facts.prepared.warnings,
    }
