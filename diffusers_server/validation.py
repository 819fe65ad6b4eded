"""A txt2img body checked before the generation lock is taken: a :class:`PreparedRequest`, or a 4xx.

Everything this engine cannot honour is refused here with a clear message, in the order A1111 would fail
(unsupported fields, sizes and counts, sampler, overrides, prompts and LoRAs, then the hires fields), so a
queued request never fails after waiting for the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import hires, options
from .errors import RequestRefused
from .inventory import ModelInventory
from .lora_adapters import LoraUse
from .models.files import CheckpointInfo
from .prompt_syntax import NetworkTag, PromptSyntaxError, extract_networks, lora_requests, strip_comments
from .samplers import ResolvedSampler, SamplerError, requested_schedule, resolve
from .schemas import Txt2ImgRequest

MAX_SIDE = 4096
MAX_IMAGES = 64
MAX_STEPS = 1000
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes
_NO_REFINER = (None, "", "None", "none")


@dataclass
class HiresPlan:
    """The validated hires-fix (``enable_hr``) part of a request."""

    target: hires.HiresTarget
    upscaler: str
    steps: int
    denoising_strength: float
    sampler: ResolvedSampler
    prompt: str
    negative: str
    loras: list[LoraUse]
    checkpoint: CheckpointInfo | None
    # "Hires ..." infotext keys known before generation, in A1111's order (None = left out).
    params: dict[str, Any]

    @property
    def latent(self) -> bool:
        return self.upscaler in hires.LATENT_UPSCALE_MODES


@dataclass
class PreparedRequest:
    """One txt2img request after validation: everything the locked section needs."""

    req: Txt2ImgRequest
    prompt: str
    negative: str
    loras: list[LoraUse]
    overrides: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    hires: HiresPlan | None = None
    #: img2img's extra infotext keys from "Denoising strength" on, in A1111's order (None: txt2img)
    img2img_params: dict[str, Any] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.req.width or 512), int(self.req.height or 512)

    @property
    def steps(self) -> int:
        return int(self.req.steps or 50)


class RequestValidator:
    """Checks requests against the model folders and the current options (read, never changed)."""

    def __init__(
        self,
        inventory: ModelInventory,
        current_options: Callable[[], dict[str, Any]],
        loaded_checkpoint: Callable[[], CheckpointInfo | None],
    ):
        self.inventory = inventory
        self._options = current_options
        self._loaded = loaded_checkpoint

    def prepare(self, req: Txt2ImgRequest) -> PreparedRequest:
        """Validate before taking the lock; 4xx for anything this engine cannot honour."""
        refuse_unsupported_fields(req)
        check_sizes_and_seeds(req)
        sampler = _resolve_sampler(req)
        overrides = dict(req.override_settings or {})
        warnings = self._check_overrides(overrides)
        check_variation(req)
        self._check_sampler_steps(sampler, overrides, int(req.steps or 50))
        warnings += _ignored_fields(req)
        comments = self._option(overrides, "enable_prompt_comments", True)
        prompt, negative = (
            _without_comments(req.prompt, comments),
            _without_comments(req.negative_prompt, comments),
        )
        # Only the positive prompt's tags are extra networks; A1111 encodes the negative's as text.
        loras = self._resolve_loras(extract_networks(prompt)[1], warnings)
        if req.disable_extra_networks and loras:
            warnings.append("disable_extra_networks: LoRA tags were not applied")
            loras = []
        prepared = PreparedRequest(req, prompt, negative, loras, overrides, warnings)
        if req.enable_hr:
            prepared.hires = self._prepare_hires(prepared, sampler, bool(comments))
        return prepared

    def _option(self, overrides: dict[str, Any], key: str, default: Any) -> Any:
        """An option as the request will see it: its override, else the current value."""
        return overrides[key] if key in overrides else self._options().get(key, default)

    def _check_overrides(self, overrides: dict[str, Any]) -> list[str]:
        try:
            warnings = options.validate(overrides)
        except options.OptionError as exc:
            raise RequestRefused(400, f"override_settings: {exc}") from exc
        if "sd_model_checkpoint" in overrides:
            self.inventory.find_checkpoint(str(overrides["sd_model_checkpoint"]))
        self._check_clip_skip(overrides)
        if "sd_vae" in overrides:
            self.inventory.vae_path(str(overrides["sd_vae"]))
        return warnings

    def _check_clip_skip(self, overrides: dict[str, Any]) -> None:
        """Clip skip beyond the checkpoint's CLIP layers is a 400 (A1111 fails with an IndexError 500)."""
        clip_stop = int(self._option(overrides, "CLIP_stop_at_last_layers", 1))
        wanted = overrides.get("sd_model_checkpoint") or self._options().get("sd_model_checkpoint")
        info = self.inventory.find_checkpoint(str(wanted)) if wanted else self._loaded()
        if info is None:
            return
        layers = self.inventory.clip_layers(info)
        if layers is not None and clip_stop > layers:
            raise RequestRefused(
                400,
                f"CLIP_stop_at_last_layers (clip skip) {clip_stop} is more than checkpoint {info.title} "
                f"allows: its text encoder has {layers} layers, so use 1..{layers}",
            )

    def _check_sampler_steps(self, sampler: ResolvedSampler, overrides: dict[str, Any], steps: int) -> None:
        uni_pc_order = int(self._option(overrides, "uni_pc_order", 3))
        if sampler.sampler.name == "UniPC" and steps < uni_pc_order:
            raise RequestRefused(
                400, f"UniPC needs at least uni_pc_order={uni_pc_order} steps (got steps={steps})"
            )

    def _resolve_loras(self, tags: list[NetworkTag], warnings: list[str]) -> list[LoraUse]:
        for tag in tags:
            if tag.kind not in ("lora", "lyco"):
                raise RequestRefused(400, f"extra network <{tag.kind}:...> is not supported (only lora/lyco)")
        try:
            requests = lora_requests(tags)
        except PromptSyntaxError as exc:
            # A1111's Lora extension fails on the whole list: it generates with none of the prompt's LoRAs.
            warnings.append(f"{exc}: as A1111, none of the prompt's LoRAs were applied")
            return []
        loras: list[LoraUse] = []
        for request in requests:
            info = self.inventory.lora(request.name)
            if request.dyn is not None:
                warnings.append(f"{request.tag}: dyn={request.dyn} is not applied by this engine")
            loras.append((info, request.te, request.unet))
        return loras

    def _prepare_hires(self, prepared: PreparedRequest, first: ResolvedSampler, comments: bool) -> HiresPlan:
        """Validate ``hr_*`` like A1111 (``StableDiffusionProcessingTxt2Img.init``), with 4xx, not 500."""
        req = prepared.req
        strength = _hires_strength(req)
        upscaler = req.hr_upscaler or hires.DEFAULT_UPSCALER
        if upscaler not in hires.valid_upscalers():
            raise RequestRefused(
                404, f"hr_upscaler {upscaler!r} not found; available: {', '.join(hires.valid_upscalers())}"
            )
        target = _hires_target(req, *prepared.size)
        hr_steps = int(req.hr_second_pass_steps or 0) or prepared.steps
        if not 1 <= hr_steps <= MAX_STEPS:
            raise RequestRefused(400, f"hr_second_pass_steps must be 0 (same as steps) or 1..{MAX_STEPS}")
        sampler = _hires_sampler(req, first)
        checkpoint = None
        if req.hr_checkpoint_name not in (None, "", hires.SAME_CHECKPOINT):
            checkpoint = self.inventory.find_checkpoint(str(req.hr_checkpoint_name))
        hr_prompt = _without_comments(req.hr_prompt, comments) or prepared.prompt
        hr_negative = _without_comments(req.hr_negative_prompt, comments) or prepared.negative
        _, hr_tags = extract_networks(hr_prompt)
        loras = [] if req.disable_extra_networks else self._resolve_loras(hr_tags, prepared.warnings)
        plan = HiresPlan(
            target, upscaler, hr_steps, strength, sampler, hr_prompt, hr_negative, loras, checkpoint, {}
        )
        plan.params = _hires_infotext(req, plan, first, prepared)
        return plan


def refuse_unsupported_fields(req: Txt2ImgRequest) -> None:
    """A1111 fields this engine has no implementation of: refused, never silently ignored."""
    if req.script_name:
        raise RequestRefused(422, f"Script '{req.script_name}' not found")
    for title in req.alwayson_scripts or {}:
        raise RequestRefused(422, f"Script '{title}' not found")  # A1111's words (tests/fixtures/a1111)
    refusals = (
        (req.styles, f"style(s) {req.styles} not found: this engine has no prompt styles"),
        (
            req.restore_faces,
            "restore_faces is not supported: A1111's face restorers (CodeFormer, GFPGAN) download their "
            "weights at run time and no PyPI package ships them; this engine never downloads models",
        ),
        (req.refiner_checkpoint not in _NO_REFINER, "refiner_checkpoint is not supported"),
        (req.firstpass_image, "firstpass_image is not supported"),
        (req.infotext, "infotext (filling fields from a parameters text) is not supported"),
        (
            req.firstphase_width or req.firstphase_height,
            "firstphase_width/height (legacy hires) not supported",
        ),
    )
    for condition, message in refusals:
        if condition:
            raise RequestRefused(400, message)


def check_sizes_and_seeds(req: Txt2ImgRequest) -> None:
    """Image size, steps, image count and seeds within what the engine (and torch's generators) take.

    Every field that sizes an allocation is bounded here (the hires fields in :func:`_hires_target`): an
    unchecked one reached torch as a 500 ("can't allocate memory") instead of a 400 naming it.
    """
    for name, value in (("width", int(req.width or 512)), ("height", int(req.height or 512))):
        if value < 8 or value > MAX_SIDE or value % 8:
            raise RequestRefused(400, f"{name} must be a multiple of 8 in 8..{MAX_SIDE}")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):  # the size of the first noise, in pixels
        value = getattr(req, name)
        if value is not None and value > MAX_SIDE:
            raise RequestRefused(400, f"{name} must be -1 or 0 (off) or 1..{MAX_SIDE}; got {_shown(value)}")
    steps, batch, n_iter = int(req.steps or 50), int(req.batch_size or 1), int(req.n_iter or 1)
    if steps < 1 or steps > MAX_STEPS:
        raise RequestRefused(400, f"steps must be 1..{MAX_STEPS}")
    if batch < 1 or n_iter < 1 or batch * n_iter > MAX_IMAGES:
        raise RequestRefused(400, f"batch_size*n_iter must be 1..{MAX_IMAGES}")
    # torch seeds are 64-bit, and image i of the job uses seed + i
    last_seed = SEED_MAX - batch * n_iter + 1
    for name in ("seed", "subseed"):
        value = getattr(req, name)
        if value is not None and value != -1 and not SEED_MIN <= value <= last_seed:
            raise RequestRefused(
                400,
                f"{name} must be -1 (random) or {SEED_MIN}..{last_seed} for {batch * n_iter} image(s); "
                f"got {_shown(value)}",
            )


def _shown(value: int) -> str:
    """An integer for a message: Python refuses to print one of more than 4,300 digits."""
    return str(value)[:40] if abs(value) < 10**40 else "a larger number"


def check_variation(req: Txt2ImgRequest) -> None:
    if (req.subseed_strength or 0) != 0 and not 0 <= float(req.subseed_strength or 0) <= 1:
        raise RequestRefused(400, f"subseed_strength must be 0..1 (got {req.subseed_strength})")


def _resolve_sampler(req: Txt2ImgRequest) -> ResolvedSampler:
    try:
        return resolve(req.sampler_name or req.sampler_index, req.scheduler)
    except SamplerError as exc:
        raise RequestRefused(404, str(exc)) from exc


def _ignored_fields(req: Txt2ImgRequest) -> list[str]:
    """Warnings for fields that are accepted but have no effect here."""
    warnings = []
    if req.save_images:
        warnings.append("save_images: this engine does not save files or build grids")
    if not req.enable_hr and (
        req.hr_checkpoint_name or req.hr_sampler_name or req.hr_prompt or req.hr_negative_prompt
    ):
        warnings.append("hr_* fields are ignored because enable_hr is false")
    return warnings


def _without_comments(text: str | None, comments: bool) -> str:
    return strip_comments(text or "") if comments else text or ""


def _hires_strength(req: Txt2ImgRequest) -> float:
    if req.denoising_strength is None:
        raise RequestRefused(
            400, "enable_hr needs denoising_strength (0..1, the second pass's strength); it was not given"
        )
    strength = float(req.denoising_strength)
    if not 0 <= strength <= 1:
        raise RequestRefused(400, f"denoising_strength must be 0..1 (got {strength})")
    return strength


def _hires_target(req: Txt2ImgRequest, width: int, height: int) -> hires.HiresTarget:
    scale, rx, ry = float(req.hr_scale or 0), int(req.hr_resize_x or 0), int(req.hr_resize_y or 0)
    if rx < 0 or ry < 0:
        raise RequestRefused(400, "hr_resize_x/hr_resize_y must be >= 0")
    if rx == 0 and ry == 0 and scale <= 0:
        raise RequestRefused(400, "hr_scale must be > 0 (or give hr_resize_x/hr_resize_y)")
    if rx == 0 and ry == 0 and max(width, height) * scale >= MAX_SIDE + 1:  # before int() of a huge product
        raise RequestRefused(
            400, f"hires size {width}x{height} x hr_scale {scale:g} is outside 8..{MAX_SIDE} per side"
        )
    target = hires.target(width, height, scale, rx, ry)
    hr_w, hr_h = target.size
    if min(hr_w, hr_h) < 8 or max(target.upscale_x, target.upscale_y) > MAX_SIDE:
        raise RequestRefused(
            400, f"hires size {target.upscale_x}x{target.upscale_y} is outside 8..{MAX_SIDE} per side"
        )
    return target


def _hires_sampler(req: Txt2ImgRequest, first: ResolvedSampler) -> ResolvedSampler:
    """A1111: hr_sampler_name null -> the first pass's sampler; hr_scheduler null -> its scheduler."""
    main_name = req.sampler_name or req.sampler_index
    hr_name = req.hr_sampler_name if req.hr_sampler_name not in ("", hires.SAME_SAMPLER) else None
    hr_schedule = req.hr_scheduler if req.hr_scheduler not in ("", hires.SAME_SCHEDULER) else None
    if hr_name is None and hr_schedule is None:
        return first
    try:
        return resolve(hr_name or main_name, hr_schedule or requested_schedule(main_name, req.scheduler))
    except SamplerError as exc:
        raise RequestRefused(404, f"hires pass: {exc}") from exc


def _hires_infotext(
    req: Txt2ImgRequest, plan: HiresPlan, first: ResolvedSampler, prepared: PreparedRequest
) -> dict[str, Any]:
    """The "Hires ..." infotext keys known before generation, in A1111's order (None = left out)."""
    checkpoint, sampler = plan.checkpoint, plan.sampler
    params: dict[str, Any] = {
        "Hires checkpoint": f"{checkpoint.name_for_extra} [{checkpoint.shorthash}]" if checkpoint else None,
        "Hires sampler": sampler.sampler.name if sampler.sampler.name != first.sampler.name else None,
        "Hires prompt": plan.prompt if plan.prompt != prepared.prompt else None,
        "Hires negative prompt": plan.negative if plan.negative != prepared.negative else None,
        "Hires schedule type": sampler.schedule.label
        if sampler.schedule.label != first.schedule.label
        else None,
    }
    rx, ry = int(req.hr_resize_x or 0), int(req.hr_resize_y or 0)
    if rx == 0 and ry == 0:
        params["Hires upscale"] = req.hr_scale
    else:
        params["Hires resize"] = f"{rx}x{ry}"
    params["Hires steps"] = req.hr_second_pass_steps or None
    params["Hires upscaler"] = req.hr_upscaler
    return params
