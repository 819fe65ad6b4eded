"""What A1111 v1.10.1 does with img2img, extras, png-info and interrogate requests: the fake's image logic.

Measured on the real A1111 and recorded in ``tests/fixtures/a1111/images.json`` by
``scripts/record_a1111_images.py``; ``tests/worker/test_fake_image_transcripts.py`` replays the recording
against the fake. The quirks are kept: several init images with a smaller ``batch_size`` fail with a 500,
a larger one is cut to their number (the seeds are not), a mask of another size is used anyway, an unknown
or lower-cased upscaler is a 500 ``AssertionError``, a CLIP interrogation without its weights answers 200
with the caption ``<error>``, DeepBooru without its weights a 500 ``IndexError``.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin

from tests.support.a1111_behaviour import A1111Failure, exception_body, http_exception_body
from worker.a1111.img2img_fields import EXTRAS_FIELDS, INPAINTING_FILL_NAMES

BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")


def decode_image(text: Any, *, transpose: bool = True) -> Image.Image:
    """``decode_base64_to_image`` + ``images.read``: a data-URI prefix dropped, EXIF orientation applied."""
    text = str(text)
    if text.startswith("data:image/"):
        text = text.split(";")[1].split(",")[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text)))
    except (binascii.Error, ValueError, OSError):
        raise A1111Failure(500, http_exception_body("Invalid encoded image")) from None
    try:
        image.load()
    except OSError as exc:
        raise A1111Failure(500, exception_body("OSError", str(exc))) from None
    return (ImageOps.exif_transpose(image) or image) if transpose else image


def check_init_images(body: dict[str, Any]) -> int:
    """The number of images one iteration makes; A1111's errors for missing or surplus init images."""
    images = body.get("init_images")
    if images is None:
        raise A1111Failure(404, http_exception_body("Init image not found"))
    if body.get("mask"):
        decode_image(body["mask"])
    for text in images:
        decode_image(text)
    batch = int(body.get("batch_size") or 1)
    if len(images) > batch:
        raise A1111Failure(
            500,
            exception_body(
                "RuntimeError", f"bad number of images passed: {len(images)}; expecting {batch} or less"
            ),
        )
    return len(images) if len(images) > 1 else batch


def img2img_extra(params: dict[str, Any]) -> dict[str, Any]:
    """``extra_generation_params`` as ``StableDiffusionProcessingImg2Img.init`` fills them, in its order."""
    extra: dict[str, Any] = {"Denoising strength": params["denoising_strength"]}
    if not params.get("mask"):
        return extra
    blur = params.get("mask_blur")
    blur_x = blur if isinstance(blur, int) else params["mask_blur_x"]
    blur_y = blur if isinstance(blur, int) else params["mask_blur_y"]
    if params["inpainting_mask_invert"]:
        extra["Mask mode"] = "Inpaint not masked"
    if blur_x > 0 or blur_y > 0:
        extra["Mask blur"] = blur_x if blur_x == blur_y else None
    blank = decode_image(params["mask"]).convert("L").getbbox() is None
    if params["inpaint_full_res"] and blank:
        return extra  # "Unable to perform Inpaint Only mask because mask is blank": plain img2img
    if params["inpaint_full_res"]:
        extra.update(
            {"Inpaint area": "Only masked", "Masked area padding": params["inpaint_full_res_padding"]}
        )
    fill = int(params["inpainting_fill"])
    if fill != 1:
        extra["Masked content"] = INPAINTING_FILL_NAMES[fill]
    return extra


def _encode(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def extras(upscalers: list[str], body: dict[str, Any], images: list[Any]) -> list[Image.Image]:
    """``postprocessing.run_extras``: the upscaled images (sizes as A1111 makes them)."""
    params = {**EXTRAS_FIELDS, **body}
    for field in ("upscaler_1", "upscaler_2"):
        name = params[field]
        if name not in ("None", None) and name not in upscalers:
            raise A1111Failure(500, exception_body("AssertionError", f"could not find upscaler named {name}"))
    out = []
    for text in images:
        image = decode_image(text).convert("RGB")
        if params["upscaler_1"] in ("None", None):
            out.append(image)
        elif params["resize_mode"] == 1:
            out.append(image.resize((int(params["upscaling_resize_w"]), int(params["upscaling_resize_h"]))))
        else:
            scale = float(params["upscaling_resize"])
            out.append(image.resize((int(image.width * scale), int(image.height * scale))))
    return out


def _html_info(body: dict[str, Any]) -> str:
    params = {**EXTRAS_FIELDS, **body}
    if params["upscaler_1"] in ("None", None):
        return "<p></p>"
    if params["resize_mode"] == 1:
        size = f"{params['upscaling_resize_w']}x{params['upscaling_resize_h']}"
        parts = [f"Postprocess upscale to: {size}", f"Postprocess crop to: {size}"]
    else:
        parts = [f"Postprocess upscale by: {float(params['upscaling_resize'])}"]
    return "<p>" + ", ".join([*parts, f"Postprocess upscaler: {params['upscaler_1']}"]) + "</p>"


def image_tool(
    upscalers: list[str], endpoint: str, body: dict[str, Any], *, captions: dict[str, str] | None = None
) -> dict[str, Any]:
    """The answer to one extras, png-info or interrogate request (``captions``: interrogate's, by model)."""
    if endpoint == "extra-single-image":
        (image,) = extras(upscalers, body, [body.get("image", "")])
        return {"html_info": _html_info(body), "image": _encode(image)}
    if endpoint == "extra-batch-images":
        done = extras(upscalers, body, [item["data"] for item in body.get("imageList") or []])
        return {"html_info": _html_info(body), "images": [_encode(image) for image in done]}
    if endpoint == "png-info":
        return png_info(body)
    return interrogate(body, captions or {})


def png_info(body: dict[str, Any]) -> dict[str, Any]:
    """The infotext and other text chunks; ``parameters`` as A1111 parsed the recorded infotexts."""
    from tests.support.a1111_behaviour import transcript

    image = decode_image(body.get("image", ""), transpose=False)  # the file's own text chunks
    texts = dict(image.text) if isinstance(image, PngImagePlugin.PngImageFile) else {}
    info = str(texts.pop("parameters", ""))
    for exchange in transcript("images"):
        if exchange["endpoint"] == "png-info" and exchange["response"].get("info") == info:
            return {"info": info, "items": texts, "parameters": exchange["response"]["parameters"]}
    return {"info": info, "items": texts, "parameters": {}}


def interrogate(body: dict[str, Any], captions: dict[str, str]) -> dict[str, Any]:
    """The model's caption when it has weights (``captions``); without: CLIP captions ``<error>``, DeepBooru
    fails."""
    model = body.get("model", "clip")
    decode_image(body.get("image", ""))
    if model in captions:
        return {"caption": captions[model]}
    if model == "clip":
        return {"caption": "<error>"}
    if model == "deepdanbooru":
        raise A1111Failure(500, exception_body("IndexError", "list index out of range"))
    raise A1111Failure(404, http_exception_body("Model not found"))
