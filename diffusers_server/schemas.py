"""Request models with A1111 v1.10's txt2img fields, API defaults and leniency (unknown keys are ignored)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from .img2img_fields import IMG2IMG_FIELDS


class Txt2ImgRequest(BaseModel):
    """A1111's ``StableDiffusionTxt2ImgProcessingAPI``: all optional, API defaults.

    Its fields, order and defaults are ``worker/a1111/txt2img_fields.py``'s (``tests/unit/test_contracts.py``
    holds them equal); the types are written here, where the request is validated.
    """

    # NaN/Infinity (which Python's JSON reader accepts) are refused with a 422, never a 500 later on
    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, protected_namespaces=(), allow_inf_nan=False
    )

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    force_task_id: str | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | None = []
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = {}
    infotext: str | None = None


class PngInfoRequest(BaseModel):
    image: str


#: txt2img fields A1111's img2img API does not have (its hires fix and legacy first pass): an img2img body
#: that sends them has them ignored, as A1111 ignores unknown keys; they are not echoed back.
TXT2IMG_ONLY_FIELDS = (
    "enable_hr",
    "firstphase_width",
    "firstphase_height",
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
)


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's ``StableDiffusionImg2ImgProcessingAPI``: the txt2img fields both share plus these, A1111's
    API defaults (``denoising_strength`` 0.75, ``inpaint_full_res`` true, ``mask_blur_x/y`` 4).

    ``mask_blur`` (an int) sets both ``mask_blur_x`` and ``mask_blur_y``, as A1111's property setter does.
    """

    init_images: list[str] | None = None
    resize_mode: int | None = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = False

    @model_validator(mode="after")
    def _without_txt2img_fields(self) -> Img2ImgRequest:
        for name in TXT2IMG_ONLY_FIELDS:
            setattr(self, name, Txt2ImgRequest.model_fields[name].get_default())
        return self

    def echo(self) -> dict[str, Any]:
        """A1111's ``parameters`` echo, in its field order: the images left out unless
        ``include_init_images``."""
        dumped = self.model_dump()
        body = {name: dumped[name] for name in IMG2IMG_FIELDS}
        if not self.include_init_images:
            body["init_images"], body["mask"] = None, None
        return body


class ExtrasRequest(BaseModel):
    """A1111's ``ExtrasBaseRequest`` (``/extra-single-image``, ``/extra-batch-images``), its defaults."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class ExtrasSingleRequest(ExtrasRequest):
    image: str = ""


class ExtrasFile(BaseModel):
    data: str
    name: str


class ExtrasBatchRequest(ExtrasRequest):
    imageList: list[ExtrasFile]
