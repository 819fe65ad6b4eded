"""The job input contract: one strict model for every accepted job form.

Three forms are accepted without edits (docs/api.md):

* the native form (``checkpoint``, ``loras``, ``sampler``, ``clip_skip``, ``hires``, ``output``...);
* a plain A1111 ``/sdapi/v1/txt2img`` body, including the diffusers-style ``num_inference_steps``
  and ``guidance_scale`` that the official RunPod worker's example sends;
* the ``{"api": {"method", "endpoint"}, "payload": {...}}`` envelope of the popular network-volume
  worker, for txt2img and an allowlist of read-only listing and refresh endpoints.

A fourth form, ``{"registry": {"action": ...}}`` (and that worker's ``/v1/download`` and ``/v1/sync``
envelopes), manages the models on the volume: its contract is ``worker.model_job_types``.

Native and A1111 fields live in one model, so a body may mix them; two spellings of one value
must agree. Unknown fields are refused with the nearest valid names: A1111 itself silently ignores
them, which is how a typo becomes a different image.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.a1111.endpoints import (
    GENERATION_ENDPOINTS,
    IMAGE_TOOL_ENDPOINTS,
    LISTING_ENDPOINTS,
    endpoint_name,
    listing_method,
)
from worker.errors import InputInvalid, excerpt
from worker.extension_units import MAX_UNITS, ADetailerUnit, ControlNetUnit
from worker.model_job_types import PEER_ENDPOINTS, ModelJobRequest, RegistryJobInput, peer_action
from worker.translate_extensions import with_native_units

OutputFormat = Literal["png", "jpeg", "webp"]
Delivery = Literal["auto", "inline", "url"]

MAX_SEED = 2**32 - 1
#: model, sampler and scheduler names (paths with sub-folders and an A1111 " [hash]" fit easily)
MAX_NAME = 1000


def _dimension(value: int, name: str) -> int:
    if value % 8:
        lower, upper = value - value % 8, value - value % 8 + 8
        raise ValueError(f"{name} must be a multiple of 8 (got {value}; try {lower} or {upper})")
    return value


def _is_number_field(annotation: Any) -> bool:
    """int or float (maybe optional), not bool: a JSON ``true`` there is a mistake, not the number 1."""
    options = set(getattr(annotation, "__args__", ())) or {annotation}
    return bool(options & {int, float}) and bool not in options


class _Strict(BaseModel):
    # NaN and Infinity are not numbers a generation can use (and not JSON either)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, bool) and field is not None and _is_number_field(field.annotation):
            raise ValueError("must be a number, not true/false")
        return value


class OutputOptions(BaseModel):
    """The job's ``output`` object: image format and how images are delivered."""

    model_config = ConfigDict(extra="forbid")

    format: OutputFormat = Field(
        "png", description="png passes the engine's bytes through untouched; jpeg/webp re-encode."
    )
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality (ignored for png).")
    delivery: Delivery = Field(
        "auto",
        description=(
            "auto: inline unless the output exceeds the size limit, then upload if a bucket is "
            "configured; inline: never upload; url: always upload."
        ),
    )


class LoraRef(_Strict):
    """One LoRA to apply; ``weight`` defaults to the registry's default scale, else 1.0."""

    name: str = Field(min_length=1, max_length=255)
    weight: float | None = Field(None, ge=-10, le=10)


class HiresOptions(_Strict):
    """A1111's "hires fix": generate at width x height, upscale, then refine."""

    enabled: bool = True
    scale: float | None = Field(None, ge=1, le=4)
    resize_x: int | None = Field(None, ge=0, le=4096)
    resize_y: int | None = Field(None, ge=0, le=4096)
    upscaler: str | None = Field(None, max_length=MAX_NAME)
    steps: int | None = Field(None, ge=0, le=150)
    denoising_strength: float | None = Field(None, ge=0, le=1)
    sampler: str | None = Field(None, max_length=MAX_NAME)
    scheduler: str | None = Field(None, max_length=MAX_NAME)
    checkpoint: str | None = Field(None, max_length=MAX_NAME)
    prompt: str | None = Field(None, max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)


class Txt2ImgJob(_Strict):
    """A txt2img job in native or A1111 spelling (both may be mixed; see ``SYNONYMS``)."""

    # --- native form ---------------------------------------------------------------------
    prompt: str = Field(max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)
    checkpoint: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    loras: list[LoraRef] = Field(default_factory=list, max_length=32)
    vae: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    sampler: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    scheduler: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    steps: int | None = Field(None, ge=1, le=150)
    cfg_scale: float | None = Field(None, ge=1, le=30)
    width: int | None = Field(None, ge=64, le=2048)
    height: int | None = Field(None, ge=64, le=2048)
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    batch_size: int | None = Field(None, ge=1, le=64)
    n_iter: int | None = Field(None, ge=1, le=100)
    clip_skip: int | None = Field(None, ge=1, le=12)
    hires: HiresOptions | None = None
    output: OutputOptions = Field(default_factory=OutputOptions)
    controlnet: list[ControlNetUnit] | None = Field(None, min_length=1, max_length=MAX_UNITS)
    adetailer: list[ADetailerUnit] | None = Field(None, min_length=1, max_length=MAX_UNITS)

    # --- other spellings of native fields --------------------------------------------------
    sampler_name: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    sampler_index: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    num_inference_steps: int | None = Field(None, ge=1, le=150)
    guidance_scale: float | None = Field(None, ge=1, le=30)

    # --- A1111 txt2img fields passed through as given --------------------------------------
    styles: list[str] | None = None
    subseed: int | None = Field(None, ge=-1, le=MAX_SEED)
    subseed_strength: float | None = Field(None, ge=0, le=1)
    seed_resize_from_h: int | None = Field(None, ge=-1, le=4096)
    seed_resize_from_w: int | None = Field(None, ge=-1, le=4096)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = None
    do_not_save_grid: bool | None = None
    eta: float | None = Field(None, ge=0, le=10)
    denoising_strength: float | None = Field(None, ge=0, le=1)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = None
    refiner_checkpoint: str | None = Field(None, max_length=MAX_NAME)
    refiner_switch_at: float | None = Field(None, ge=0, le=1)
    disable_extra_networks: bool | None = None
    firstpass_image: str | None = None  # base64: the first pass of a hires job, given instead of generated
    comments: dict[str, Any] | None = None
    enable_hr: bool | None = None
    firstphase_width: int | None = Field(None, ge=0, le=2048)
    firstphase_height: int | None = Field(None, ge=0, le=2048)
    hr_scale: float | None = Field(None, ge=1, le=4)
    hr_upscaler: str | None = Field(None, max_length=MAX_NAME)
    hr_second_pass_steps: int | None = Field(None, ge=0, le=150)
    hr_resize_x: int | None = Field(None, ge=0, le=4096)
    hr_resize_y: int | None = Field(None, ge=0, le=4096)
    hr_checkpoint_name: str | None = Field(None, max_length=MAX_NAME)
    hr_sampler_name: str | None = Field(None, max_length=MAX_NAME)
    hr_scheduler: str | None = Field(None, max_length=MAX_NAME)
    hr_prompt: str | None = Field(None, max_length=20_000)
    hr_negative_prompt: str | None = Field(None, max_length=20_000)
    force_task_id: str | None = Field(None, max_length=MAX_NAME)
    script_name: str | None = Field(None, max_length=MAX_NAME)
    script_args: list[Any] | None = None
    send_images: bool | None = None
    save_images: bool | None = None
    alwayson_scripts: dict[str, Any] | None = None
    infotext: str | None = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None, info: Any) -> int | None:
        return None if value is None else _dimension(value, info.field_name)

    @model_validator(mode="after")
    def _merge_spellings(self) -> Txt2ImgJob:
        """Fold every other spelling into the native field; disagreeing spellings are an error."""
        for native, others in SYNONYMS.items():
            given = {native: getattr(self, native)} if getattr(self, native) is not None else {}
            given.update({name: getattr(self, name) for name in others if getattr(self, name) is not None})
            if len({_comparable(v) for v in given.values()}) > 1:
                shown = ", ".join(f"{k}={excerpt(v)}" for k, v in given.items())
                raise ValueError(f"conflicting values for {native}: {shown}; give one of them")
            if given and getattr(self, native) is None:
                object.__setattr__(self, native, next(iter(given.values())))
        return self

    @model_validator(mode="after")
    def _overrides_agree(self) -> Txt2ImgJob:
        """``checkpoint``/``vae``/``clip_skip`` and their ``override_settings`` keys are one value each."""
        overrides = self.override_settings or {}
        for native, key in OVERRIDE_SPELLINGS.items():
            given, override = getattr(self, native), overrides.get(key)
            if override is None:
                continue
            if native != "clip_skip" and not isinstance(override, str):
                raise ValueError(
                    f"override_settings value for {native} must be a string, got {excerpt(override)}"
                )
            if given is not None and _same_name(given) != _same_name(override):
                raise ValueError(
                    f"conflicting values for {native}: {native}={excerpt(given)} and "
                    f"override_settings.{key}={excerpt(override)}; give one of them"
                )
        return self

    @model_validator(mode="after")
    def _native_extension_units(self) -> Txt2ImgJob:
        """``controlnet``/``adetailer`` become ``alwayson_scripts`` entries (worker.translate_extensions)."""
        scripts = with_native_units(self.alwayson_scripts, self.controlnet, self.adetailer)
        if scripts is not None:
            object.__setattr__(self, "alwayson_scripts", scripts)
            self.model_fields_set.add("alwayson_scripts")
        return self

    @model_validator(mode="after")
    def _one_hires_form(self) -> Txt2ImgJob:
        a1111_hires = sorted(name for name in self.model_fields_set if name in A1111_HIRES_FIELDS)
        if self.hires is not None and a1111_hires:
            raise ValueError(
                f"give hires either as the hires object or as {', '.join(a1111_hires)}, not both"
            )
        return self

    @property
    def image_count(self) -> int:
        return (self.batch_size or 1) * (self.n_iter or 1)

    @property
    def checkpoint_ref(self) -> str | None:
        """The checkpoint the job names, as ``checkpoint`` or ``override_settings.sd_model_checkpoint``."""
        return self.checkpoint or (self.override_settings or {}).get("sd_model_checkpoint") or None

    @property
    def vae_ref(self) -> str | None:
        """The VAE the job names, as ``vae`` or ``override_settings.sd_vae``."""
        return self.vae or (self.override_settings or {}).get("sd_vae") or None

    @property
    def hires_choice(self) -> HiresChoice:
        """The hires fields, whichever form (``hires`` object or A1111's ``enable_hr``/``hr_*``) gave them."""
        hires = self.hires
        if hires is None:
            return HiresChoice(
                enabled=bool(self.enable_hr),
                scale=self.hr_scale,
                resize_x=self.hr_resize_x,
                resize_y=self.hr_resize_y,
                steps=self.hr_second_pass_steps,
                denoising_strength=self.denoising_strength,
                upscaler=self.hr_upscaler,
                sampler=self.hr_sampler_name,
                scheduler=self.hr_scheduler,
                checkpoint=self.hr_checkpoint_name,
                prompt=self.hr_prompt,
                negative_prompt=self.hr_negative_prompt,
            )
        strength = hires.denoising_strength
        return HiresChoice(
            enabled=hires.enabled,
            scale=hires.scale,
            resize_x=hires.resize_x,
            resize_y=hires.resize_y,
            steps=hires.steps,
            denoising_strength=self.denoising_strength if strength is None else strength,
            upscaler=hires.upscaler,
            sampler=hires.sampler,
            scheduler=hires.scheduler,
            checkpoint=hires.checkpoint,
            prompt=hires.prompt,
            negative_prompt=hires.negative_prompt,
        )


@dataclass(frozen=True)
class HiresChoice:
    """A job's hires fields in one shape, for pre-flight (names to check) and translation (fields to send)."""

    enabled: bool
    scale: float | None
    resize_x: int | None
    resize_y: int | None
    steps: int | None
    denoising_strength: float | None
    upscaler: str | None
    sampler: str | None
    scheduler: str | None
    checkpoint: str | None
    prompt: str | None
    negative_prompt: str | None


A1111_HIRES_FIELDS: frozenset[str] = frozenset(
    {
        "enable_hr",
        "hr_scale",
        "hr_upscaler",
        "hr_second_pass_steps",
        "hr_resize_x",
        "hr_resize_y",
        "hr_checkpoint_name",
        "hr_sampler_name",
        "hr_scheduler",
        "hr_prompt",
        "hr_negative_prompt",
    }
)


def _comparable(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _same_name(value: Any) -> Any:
    """Model names compare case-insensitively (A1111 finds checkpoints and VAEs either way)."""
    return value.strip().lower() if isinstance(value, str) else value


#: native field -> the ``override_settings`` key that sets the same engine setting
OVERRIDE_SPELLINGS: dict[str, str] = {
    "checkpoint": "sd_model_checkpoint",
    "vae": "sd_vae",
    "clip_skip": "CLIP_stop_at_last_layers",
}

#: native field -> other accepted spellings of the same value
SYNONYMS: dict[str, tuple[str, ...]] = {
    "sampler": ("sampler_name", "sampler_index"),
    "steps": ("num_inference_steps",),
    "cfg_scale": ("guidance_scale",),
}


class EnvelopeApi(_Strict):
    method: Literal["GET", "POST", "get", "post"] = "POST"
    endpoint: str = Field(min_length=1, max_length=200)


class Envelope(_Strict):
    """``{"api": {"method", "endpoint"}, "payload": {...}}`` as sent to the network-volume worker."""

    api: EnvelopeApi
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    job: Txt2ImgJob
    form: Literal["native", "a1111", "envelope"]


@dataclass(frozen=True)
class ListingRequest:
    endpoint: str


JobRequest = GenerationRequest | ListingRequest | ModelJobRequest

NATIVE_FIELDS: frozenset[str] = frozenset(
    {
        "prompt",
        "negative_prompt",
        "checkpoint",
        "loras",
        "vae",
        "sampler",
        "scheduler",
        "steps",
        "cfg_scale",
        "width",
        "height",
        "seed",
        "batch_size",
        "n_iter",
        "clip_skip",
        "hires",
        "output",
        "controlnet",
        "adetailer",
    }
)


#: why ``POST options`` is refused and what to do instead (docs/api.md#why-post-options-is-refused)
OPTIONS_INSTEAD = (
    ": on serverless each job lands on one worker of many, so a setting one job changes cannot hold for "
    "the jobs after it. Name the model in every job instead (`checkpoint` or "
    "`override_settings.sd_model_checkpoint`, `vae` or `override_settings.sd_vae`), or set the "
    "worker's default checkpoint with WORKER_DEFAULT_CHECKPOINT on the endpoint"
)


def parse_job_input(raw: Any, *, max_images: int) -> JobRequest:
    """Validate a job's ``input`` and tell which form it is.

    Raises:
        InputInvalid: naming the bad field, its value and the valid choices.
    """
    if not isinstance(raw, dict):
        raise InputInvalid(f"job input must be a JSON object, got {type(raw).__name__}")
    _refuse_non_finite(raw, "input")
    if "api" in raw:
        return _parse_envelope(raw, max_images=max_images)
    if "registry" in raw:  # a registry job (worker.model_job_types)
        return ModelJobRequest(_validate(RegistryJobInput, raw, where="input").registry)
    job = _validate(Txt2ImgJob, raw, where="input")
    _check_image_cap(job, max_images)
    form: Literal["native", "a1111"] = "a1111" if raw.keys() - NATIVE_FIELDS else "native"
    return GenerationRequest(job=job, form=form)


def _parse_envelope(raw: dict[str, Any], *, max_images: int) -> JobRequest:
    envelope = _validate(Envelope, raw, where="input")
    endpoint = endpoint_name(envelope.api.endpoint)
    method = envelope.api.method.upper()
    if endpoint in GENERATION_ENDPOINTS:
        if method != "POST":
            raise InputInvalid(f"api.method {method!r} is wrong for {endpoint}: use POST")
        job = _validate(Txt2ImgJob, envelope.payload or {}, where="payload")
        _check_image_cap(job, max_images)
        return GenerationRequest(job=job, form="envelope")
    if endpoint in PEER_ENDPOINTS:  # the network-volume worker's model helpers: registry jobs here
        if method != "POST":
            raise InputInvalid(f"api.method {method!r} is wrong for /{endpoint}: use POST")
        payload = _validate(PEER_ENDPOINTS[endpoint], envelope.payload or {}, where="payload")
        return ModelJobRequest(peer_action(payload), form="envelope")
    served = (
        GENERATION_ENDPOINTS
        + IMAGE_TOOL_ENDPOINTS
        + LISTING_ENDPOINTS
        + tuple(f"/{name}" for name in PEER_ENDPOINTS)
    )
    if endpoint not in LISTING_ENDPOINTS:
        nearest = difflib.get_close_matches(endpoint, served, n=3)
        hint = f"; nearest: {', '.join(nearest)}" if nearest else ""
        raise InputInvalid(
            f"api.endpoint {envelope.api.endpoint!r} is not served by this worker{hint}; "
            f"allowed: {', '.join(served)}"
        )
    expected = listing_method(endpoint)
    if method != expected and expected == "GET":
        raise InputInvalid(
            f"api.method {method!r} is not allowed for {endpoint}: it is read-only through this worker"
            + (OPTIONS_INSTEAD if endpoint == "options" else ", use GET")
        )
    if method != expected:
        raise InputInvalid(f"api.method {method!r} is wrong for {endpoint}: use {expected}")
    if envelope.payload:
        raise InputInvalid(f"{endpoint} takes no payload, got fields {sorted(envelope.payload)}")
    return ListingRequest(endpoint=endpoint)


def _refuse_non_finite(value: Any, where: str) -> None:
    """NaN/Infinity anywhere (``override_settings``, ``comments``...): not JSON, never sent to the engine."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputInvalid(f"{where}={value!r}: not a finite number (JSON has no NaN or Infinity)")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, f"{where}.{excerpt(key, 40) if not isinstance(key, str) else key[:40]}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_non_finite(item, f"{where}.{index}")


def _check_image_cap(job: Txt2ImgJob, max_images: int) -> None:
    if job.image_count > max_images:
        raise InputInvalid(
            f"batch_size*n_iter = {job.batch_size or 1}*{job.n_iter or 1} = {job.image_count} images "
            f"exceeds this worker's limit of {max_images} (WORKER_MAX_IMAGES_PER_JOB)"
        )


ModelT = TypeVar("ModelT", bound=BaseModel)


def _validate(model: type[ModelT], data: dict[str, Any], *, where: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputInvalid(_describe(exc, model, where)) from None


def _describe(exc: ValidationError, model: type[BaseModel], where: str) -> str:
    """Turn pydantic's errors into one line naming each field, its value and what is valid."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part)[:40] for part in err["loc"])
        field = f"{where}.{loc}" if loc else where
        if err["type"] == "extra_forbidden":
            problems.append(_unknown_field(field, str(err["loc"][-1])[:100], model, err["loc"]))
        elif err["type"] == "missing":
            problems.append(f"{field} is required")
        else:
            message = err["msg"].removeprefix("Value error, ")
            if loc:
                problems.append(f"{field}={excerpt(err['input'])}: {message}")
            else:
                problems.append(message)
    return "; ".join(problems)


def _unknown_field(field: str, name: str, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    owner: type[BaseModel] = model
    for part in loc[:-1]:  # walk into nested models (hires.*, output.*, loras.N.*)
        annotation = owner.model_fields[str(part)].annotation if str(part) in owner.model_fields else None
        nested = _nested_model(annotation)
        if nested is not None:
            owner = nested
    valid = sorted(owner.model_fields)
    nearest = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(nearest)}?" if nearest else f"; valid fields: {', '.join(valid)}"
    return f"unknown field {field}{hint}"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None
