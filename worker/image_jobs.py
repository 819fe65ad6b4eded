"""The job contract of the kinds that take images: img2img (and inpainting), extras, png-info, interrogate.

Img2img is a generation like txt2img and joins its pipeline: ``Img2ImgJob`` is a ``Txt2ImgJob`` (the same
checkpoint, sampler, LoRA, VAE and clip-skip fields, pre-flight and post-check) plus A1111's img2img fields
(``worker.a1111.img2img_fields``), minus the hires pass, which img2img does not have. The other kinds are
one engine call each (``ImageToolRequest``).

Forms, as for txt2img (docs/api.md, "Images in"):

* native or plain A1111 img2img: a job with ``init_images``; ``inpainting_fill`` also takes A1111's names
  (``"latent noise"``...) and ``inpainting_mask_invert`` a boolean;
* native tools: ``{"upscale": {...}}``, ``{"png_info": {"image": ...}}``, ``{"interrogate": {...}}``;
* the envelope: ``/sdapi/v1/img2img``, ``extra-single-image``, ``extra-batch-images``, ``png-info`` and
  ``interrogate``, with A1111's own bodies.

Images are strings here (base64, a data URI, or an ``https`` URL); ``worker.input_images`` checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from worker.a1111.endpoints import IMAGE_TOOL_ENDPOINTS, endpoint_name
from worker.a1111.img2img_fields import INPAINTING_FILL_NAMES
from worker.errors import InputInvalid
from worker.schema import (
    A1111_HIRES_FIELDS,
    MAX_NAME,
    NATIVE_FIELDS,
    Envelope,
    GenerationRequest,
    JobRequest,
    OutputOptions,
    Txt2ImgJob,
    _Strict,
    _validate,
    parse_job_input,
)

#: at most this many init images (A1111 sends one batch slot per image)
MAX_INIT_IMAGES = 16
#: txt2img's own fields: img2img has no hires pass (A1111's img2img API does not know them)
TXT2IMG_ONLY_FIELDS: frozenset[str] = A1111_HIRES_FIELDS | {"hires", "firstphase_width", "firstphase_height"}
#: an image: base64, a ``data:image/...;base64,`` URI, or an ``https`` URL
ImageText = str

ImageToolEndpoint = Literal["extra-single-image", "extra-batch-images", "png-info", "interrogate"]
INTERROGATE_MODELS = ("clip", "deepdanbooru")


class Img2ImgJob(Txt2ImgJob):
    """An img2img or inpainting job (a ``mask`` makes it inpainting); A1111's spelling throughout."""

    prompt: str = Field("", max_length=20_000)
    init_images: list[ImageText] = Field(min_length=1, max_length=MAX_INIT_IMAGES)
    mask: ImageText | None = None
    resize_mode: int | None = Field(None, ge=0, le=3)
    image_cfg_scale: float | None = Field(None, ge=0, le=30)
    mask_blur: int | None = Field(None, ge=0, le=64)
    mask_blur_x: int | None = Field(None, ge=0, le=64)
    mask_blur_y: int | None = Field(None, ge=0, le=64)
    mask_round: bool | None = None
    inpainting_fill: int | None = Field(None, ge=0, le=3)
    inpaint_full_res: bool | None = None
    inpaint_full_res_padding: int | None = Field(None, ge=0, le=256)
    inpainting_mask_invert: int | None = Field(None, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0, le=10)
    latent_mask: ImageText | None = None
    include_init_images: bool | None = None

    @field_validator("inpainting_fill", mode="before")
    @classmethod
    def _fill_by_name(cls, value: Any) -> Any:
        """``"latent noise"`` (any case, ``_`` or space) → 2, as A1111's UI names the modes."""
        if not isinstance(value, str):
            return value
        spelled = value.strip().lower().replace("_", " ")
        if spelled in INPAINTING_FILL_NAMES:
            return INPAINTING_FILL_NAMES.index(spelled)
        if spelled.isdigit():
            return int(spelled)
        raise ValueError(f"must be 0-3 or one of {', '.join(INPAINTING_FILL_NAMES)}")

    @field_validator("inpainting_mask_invert", mode="before")
    @classmethod
    def _invert_flag(cls, value: Any) -> Any:
        return int(value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _img2img_fields_only(self) -> Img2ImgJob:
        hires = self.model_fields_set & TXT2IMG_ONLY_FIELDS
        given = sorted(name for name in hires if getattr(self, name) is not None)
        if given:
            raise ValueError(f"{', '.join(given)}: txt2img fields; img2img has no hires pass")
        if self.latent_mask is not None:
            raise ValueError(
                "latent_mask is not accepted: A1111's API passes it to processing undecoded and the job "
                "fails; give the mask as mask"
            )
        return self

    @property
    def image_count(self) -> int:
        """One batch slot per init image when there are several (A1111 sets batch_size to their number)."""
        batch = len(self.init_images) if len(self.init_images) > 1 else (self.batch_size or 1)
        return batch * (self.n_iter or 1)


#: fields that only mean something with a mask
INPAINTING_FIELDS: frozenset[str] = frozenset(
    {
        "mask_blur",
        "mask_blur_x",
        "mask_blur_y",
        "mask_round",
        "inpainting_fill",
        "inpaint_full_res",
        "inpaint_full_res_padding",
        "inpainting_mask_invert",
    }
)


class _ExtrasFields(_Strict):
    """``ExtrasBaseRequest``: A1111's names, types and bounds."""

    resize_mode: Literal[0, 1] | None = None
    show_extras_results: bool | None = None
    gfpgan_visibility: float | None = Field(None, ge=0, le=1)
    codeformer_visibility: float | None = Field(None, ge=0, le=1)
    codeformer_weight: float | None = Field(None, ge=0, le=1)
    upscaling_resize: float | None = Field(None, gt=0, le=8)
    upscaling_resize_w: int | None = Field(None, ge=1, le=8192)
    upscaling_resize_h: int | None = Field(None, ge=1, le=8192)
    upscaling_crop: bool | None = None
    upscaler_1: str | None = Field(None, max_length=MAX_NAME)
    upscaler_2: str | None = Field(None, max_length=MAX_NAME)
    extras_upscaler_2_visibility: float | None = Field(None, ge=0, le=1)
    upscale_first: bool | None = None


class ExtrasSingleImage(_ExtrasFields):
    image: ImageText = Field(min_length=1)


class FileData(_Strict):
    data: ImageText = Field(min_length=1)
    name: str = Field(max_length=255)


class ExtrasBatchImages(_ExtrasFields):
    imageList: list[FileData] = Field(min_length=1, max_length=MAX_INIT_IMAGES)


class PngInfo(_Strict):
    image: ImageText = Field(min_length=1)


class Interrogate(_Strict):
    image: ImageText = Field(min_length=1)
    model: str = Field("clip", max_length=100)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in INTERROGATE_MODELS:
            raise ValueError(f"unknown interrogation model; valid: {', '.join(INTERROGATE_MODELS)}")
        return value


class NativeUpscale(_Strict):
    """The native upscale job: one image or several, a factor or a target size."""

    image: ImageText | None = None
    images: list[ImageText] | None = Field(None, min_length=1, max_length=MAX_INIT_IMAGES)
    upscaler: str = Field("Lanczos", min_length=1, max_length=MAX_NAME)
    scale: float | None = Field(None, gt=0, le=8)
    width: int | None = Field(None, ge=1, le=8192)
    height: int | None = Field(None, ge=1, le=8192)
    crop: bool | None = None
    upscaler_2: str | None = Field(None, max_length=MAX_NAME)
    upscaler_2_visibility: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_source_one_size(self) -> NativeUpscale:
        if (self.image is None) == (self.images is None):
            raise ValueError("give image (one) or images (several), exactly one of them")
        if self.scale is not None and (self.width or self.height):
            raise ValueError("give scale or width/height, not both")
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height")
        return self

    def as_a1111(self) -> tuple[ImageToolEndpoint, dict[str, Any]]:
        """The A1111 endpoint and body this native job means."""
        body: dict[str, Any] = {"upscaler_1": self.upscaler}
        if self.width is not None:
            body.update(resize_mode=1, upscaling_resize_w=self.width, upscaling_resize_h=self.height)
        elif self.scale is not None:
            body.update(resize_mode=0, upscaling_resize=self.scale)
        optional = {
            "upscaling_crop": self.crop,
            "upscaler_2": self.upscaler_2,
            "extras_upscaler_2_visibility": self.upscaler_2_visibility,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        if self.images is not None:
            files = [{"data": data, "name": f"image-{i}"} for i, data in enumerate(self.images)]
            return "extra-batch-images", {**body, "imageList": files}
        return "extra-single-image", {**body, "image": self.image}


class NativeTool(_Strict):
    """``{"upscale": ...}``, ``{"png_info": ...}`` or ``{"interrogate": ...}``, with ``output`` options."""

    upscale: NativeUpscale | None = None
    png_info: PngInfo | None = None
    interrogate: Interrogate | None = None
    output: OutputOptions = Field(default_factory=OutputOptions)


_TOOL_MODELS: dict[str, type[_Strict]] = {
    "extra-single-image": ExtrasSingleImage,
    "extra-batch-images": ExtrasBatchImages,
    "png-info": PngInfo,
    "interrogate": Interrogate,
}
NATIVE_TOOL_KEYS = ("upscale", "png_info", "interrogate")


@dataclass(frozen=True)
class ImageToolRequest:
    """One extras, png-info or interrogate call: A1111's endpoint and its validated body."""

    endpoint: ImageToolEndpoint
    body: dict[str, Any]
    output: OutputOptions
    form: Literal["native", "envelope"]


def parse_any_job(raw: Any, *, max_images: int) -> JobRequest | ImageToolRequest:
    """Every job form: the image kinds here, everything else by ``worker.schema.parse_job_input``.

    Raises:
        InputInvalid: naming the bad field, its value and the valid choices.
    """
    if isinstance(raw, dict):
        if "api" in raw:
            endpoint = _envelope_endpoint(raw)
            if endpoint == "img2img" or endpoint in IMAGE_TOOL_ENDPOINTS:
                return _parse_image_envelope(raw, endpoint, max_images=max_images)
        elif "init_images" in raw:
            return _generation(
                raw, "input", "a1111" if raw.keys() - NATIVE_IMG2IMG_FIELDS else "native", max_images
            )
        elif raw.keys() & set(NATIVE_TOOL_KEYS):
            return _check_tool_images(_parse_native_tool(raw), max_images)
    return parse_job_input(raw, max_images=max_images)


#: the native img2img form: txt2img's native fields and the image fields (anything else is A1111's spelling)
NATIVE_IMG2IMG_FIELDS: frozenset[str] = (
    (NATIVE_FIELDS - {"hires"})
    | INPAINTING_FIELDS
    | {
        "init_images",
        "mask",
        "denoising_strength",
        "resize_mode",
        "image_cfg_scale",
        "initial_noise_multiplier",
    }
)


def _envelope_endpoint(raw: dict[str, Any]) -> str | None:
    api = raw.get("api")
    endpoint = api.get("endpoint") if isinstance(api, dict) else None
    return endpoint_name(endpoint) if isinstance(endpoint, str) else None


def _generation(
    body: dict[str, Any], where: str, form: Literal["native", "a1111", "envelope"], max_images: int
) -> GenerationRequest:
    job = _validate(Img2ImgJob, body, where=where)
    _check_batch(job, max_images)
    return GenerationRequest(job=job, form=form)


def _check_batch(job: Img2ImgJob, max_images: int) -> None:
    count = len(job.init_images)
    if count > 1 and job.batch_size is not None and job.batch_size < count:
        raise InputInvalid(
            f"{count} init_images with batch_size={job.batch_size}: A1111 takes one batch slot per init "
            f"image and fails; leave batch_size out or set it to {count}"
        )
    if job.image_count > max_images:
        raise InputInvalid(
            f"{job.image_count} images (init images or batch_size, times n_iter) exceeds this worker's limit "
            f"of {max_images} (WORKER_MAX_IMAGES_PER_JOB)"
        )


def _parse_image_envelope(
    raw: dict[str, Any], endpoint: str, *, max_images: int
) -> JobRequest | ImageToolRequest:
    envelope = _validate(Envelope, raw, where="input")
    method = envelope.api.method.upper()
    if method != "POST":
        raise InputInvalid(f"api.method {method!r} is wrong for {endpoint}: use POST")
    payload = envelope.payload or {}
    if endpoint == "img2img":
        return _generation(payload, "payload", "envelope", max_images)
    model = _TOOL_MODELS[endpoint]
    body = _validate(model, payload, where="payload").model_dump(exclude_unset=True)
    tool: ImageToolEndpoint = endpoint  # type: ignore[assignment]  # checked against IMAGE_TOOL_ENDPOINTS
    request = ImageToolRequest(endpoint=tool, body=body, output=OutputOptions(), form="envelope")
    return _check_tool_images(request, max_images)


def _check_tool_images(request: ImageToolRequest, max_images: int) -> ImageToolRequest:
    count = len(image_fields(request.body))
    if count > max_images:
        raise InputInvalid(
            f"{count} images exceed this worker's limit of {max_images} per job (WORKER_MAX_IMAGES_PER_JOB)"
        )
    return request


def _parse_native_tool(raw: dict[str, Any]) -> ImageToolRequest:
    tool = _validate(NativeTool, raw, where="input")
    given = [name for name in NATIVE_TOOL_KEYS if getattr(tool, name) is not None]
    if len(given) != 1:
        raise InputInvalid(f"give one of {', '.join(NATIVE_TOOL_KEYS)} per job, got {', '.join(given)}")
    if tool.upscale is not None:
        endpoint, body = tool.upscale.as_a1111()
    elif tool.png_info is not None:
        endpoint, body = "png-info", tool.png_info.model_dump()
    else:
        assert tool.interrogate is not None
        endpoint, body = "interrogate", tool.interrogate.model_dump()
    return ImageToolRequest(endpoint=endpoint, body=body, output=tool.output, form="native")


def image_fields(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, text) of each image in an A1111 tool body: ``image`` or ``imageList[i].data``."""
    if "imageList" in body:
        return [(f"imageList[{i}].data", str(item["data"])) for i, item in enumerate(body["imageList"])]
    return [("image", str(body["image"]))]
