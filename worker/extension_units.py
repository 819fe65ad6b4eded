"""The native form of the two extensions users depend on: ``controlnet: [{...}]`` and ``adetailer: [{...}]``.

Each unit is typed and bounded here, so a mistake is refused naming the unit, the field and the valid choices
before anything reaches A1111, where it would fail late or silently: ControlNet answers a bad ``weight`` or
``control_mode`` with a 500 after loading the checkpoint, and ADetailer drops a whole unit that fails its own
validation and generates without it (docs/extensions.md).

The fields are the extensions' own, at the pinned commits (docs/extensions.md, "Versions"):

* ControlNet v1.1.455 ``internal_controlnet/args.py`` ``ControlNetUnit``: the names are kept; the enums take
  the extension's strings, their position (0, 1, 2) and short names (``control_mode: "controlnet"``);
* ADetailer v25.3.0 ``adetailer/args.py`` ``ADetailerArgs``: the names lose their ``ad_`` prefix, and the UI's
  ``ad_use_*`` switches are implied (giving ``steps`` turns on ``ad_use_steps``), with the same bounds.

``worker.translate_extensions`` turns them into the ``alwayson_scripts`` entries the extensions take. Pure.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

#: an image: base64, a ``data:image/...;base64,`` URI, or an ``https`` URL (``worker.input_images`` checks it)
ImageText = str
MAX_NAME = 1000
MAX_PROMPT = 20_000
#: more than any install has slots for (ControlNet's ``control_net_unit_count`` and ADetailer's "Max tabs");
#: A1111 drops the arguments past an extension's slots, and the post-check names the dropped unit
MAX_UNITS = 10


def _spelled(value: str) -> str:
    return " ".join(value.strip().lower().replace("_", " ").replace("-", " ").split())


def choice(options: tuple[tuple[str, ...], ...], *, numbered: bool) -> BeforeValidator:
    """A value the extension takes as a string: each option is (the extension's string, other names...);
    ``numbered``: its position is accepted too (ControlNet's older API took 0, 1, 2)."""
    names = {_spelled(name): option[0] for option in options for name in option}

    def pick(value: Any) -> str:
        if numbered and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
            return options[value][0]
        if isinstance(value, str) and _spelled(value) in names:
            return names[_spelled(value)]
        raise ValueError(f"must be one of {_described(options, numbered)}")

    return BeforeValidator(pick)


def _described(options: tuple[tuple[str, ...], ...], numbered: bool) -> str:
    """``'Balanced' (0); 'My prompt is more important' (1, 'prompt'); ...``"""
    shown = []
    for index, option in enumerate(options):
        others = [str(index)] * numbered + [repr(alias) for alias in option[1:]]
        shown.append(repr(option[0]) + (f" ({', '.join(others)})" if others else ""))
    return "; ".join(shown)


#: ControlNet's ``ControlMode``, ``ResizeMode`` (with its aliases) and ``HiResFixOption`` (scripts/enums.py)
CONTROL_MODES = (
    ("Balanced",),
    ("My prompt is more important", "prompt"),
    ("ControlNet is more important", "controlnet"),
)
RESIZE_MODES = (
    ("Just Resize", "resize"),
    ("Crop and Resize", "crop", "Inner Fit (Scale to Fit)", "Scale to Fit (Inner Fit)"),
    ("Resize and Fill", "fill", "Outer Fit (Shrink to Fit)", "Envelope (Outer Fit)"),
)
HIRES_OPTIONS = (("Both",), ("Low res only",), ("High res only",))

ControlMode = Annotated[str, choice(CONTROL_MODES, numbered=True)]
ResizeMode = Annotated[str, choice(RESIZE_MODES, numbered=True)]
HiresOption = Annotated[str, choice(HIRES_OPTIONS, numbered=False)]


class _Unit(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: Any) -> Any:
        """A JSON ``true`` where a number belongs is a mistake, not the number 1."""
        annotation = cls.model_fields[info.field_name].annotation
        options = set(getattr(annotation, "__args__", ())) or {annotation}
        if isinstance(value, bool) and options & {int, float} and bool not in options:
            raise ValueError("must be a number, not true/false")
        return value


class ControlNetUnit(_Unit):
    """One ControlNet unit (``ControlNetUnit`` of sd-webui-controlnet v1.1.455); unset fields keep the
    extension's defaults. ``image`` may be left out in img2img, where ControlNet takes the init image."""

    enabled: bool = True
    module: str = Field("none", min_length=1, max_length=MAX_NAME)
    model: str = Field(min_length=1, max_length=MAX_NAME)
    image: ImageText | None = None
    mask: ImageText | None = None
    weight: float | None = Field(None, ge=0, le=2)
    resize_mode: ResizeMode | None = None
    processor_res: int | None = Field(None, ge=-1, le=8192)
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: float | None = Field(None, ge=0, le=1)
    guidance_end: float | None = Field(None, ge=0, le=1)
    pixel_perfect: bool | None = None
    control_mode: ControlMode | None = None
    hr_option: HiresOption | None = None
    save_detected_map: bool | None = None

    @model_validator(mode="after")
    def _guidance_in_order(self) -> ControlNetUnit:
        start, end = self.guidance_start or 0.0, 1.0 if self.guidance_end is None else self.guidance_end
        if start > end:
            raise ValueError(f"guidance_start ({start}) is after guidance_end ({end})")
        return self


class ADetailerUnit(_Unit):
    """One ADetailer unit (``ADetailerArgs`` of adetailer v25.3.0, without the ``ad_`` prefix and the UI's
    ``use_*`` switches: a value given is a value used). ADetailer's bounds; steps, sizes and CFG scale also
    within the job's own limits."""

    model: str = Field(min_length=1, max_length=MAX_NAME)
    model_classes: str | None = Field(None, max_length=MAX_NAME)
    prompt: str | None = Field(None, max_length=MAX_PROMPT)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)
    confidence: float | None = Field(None, ge=0, le=1)
    mask_filter_method: Literal["Area", "Confidence"] | None = None
    mask_k: int | None = Field(None, ge=0)
    mask_min_ratio: float | None = Field(None, ge=0, le=1)
    mask_max_ratio: float | None = Field(None, ge=0, le=1)
    dilate_erode: int | None = None
    x_offset: int | None = None
    y_offset: int | None = None
    mask_merge_invert: Literal["None", "Merge", "Merge and Invert"] | None = None
    mask_blur: int | None = Field(None, ge=0)
    denoising_strength: float | None = Field(None, ge=0, le=1)
    inpaint_only_masked: bool | None = None
    inpaint_only_masked_padding: int | None = Field(None, ge=0)
    inpaint_width: int | None = Field(None, ge=64, le=2048)
    inpaint_height: int | None = Field(None, ge=64, le=2048)
    steps: int | None = Field(None, ge=1, le=150)
    cfg_scale: float | None = Field(None, ge=0, le=30)
    checkpoint: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    vae: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    sampler: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    scheduler: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    noise_multiplier: float | None = Field(None, ge=0.5, le=1.5)
    clip_skip: int | None = Field(None, ge=1, le=12)
    restore_face: bool | None = None
    controlnet_model: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    controlnet_module: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    controlnet_weight: float | None = Field(None, ge=0, le=1)
    controlnet_guidance_start: float | None = Field(None, ge=0, le=1)
    controlnet_guidance_end: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> ADetailerUnit:
        low, high = self.mask_min_ratio or 0.0, 1.0 if self.mask_max_ratio is None else self.mask_max_ratio
        if low > high:
            raise ValueError(f"mask_min_ratio ({low}) is above mask_max_ratio ({high}): nothing is masked")
        if (self.inpaint_width is None) != (self.inpaint_height is None):
            raise ValueError("give inpaint_width and inpaint_height together (ADetailer uses both)")
        return self
