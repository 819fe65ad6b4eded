"""``/extra-single-image`` and ``/extra-batch-images`` with A1111's built-in upscalers (Lanczos, Nearest).

As A1111 v1.10.1's ``postprocessing.run_extras`` with its "Upscale" script
(``scripts/postprocessing_upscale.py``) runs them: scale by ``upscaling_resize`` (mode 0) or to
``upscaling_resize_w`` x ``_h`` (mode 1, optionally cropped, centred, onto black), a second upscaler blended
in by ``extras_upscaler_2_visibility``; upscaler ``None`` leaves the image as it is. Face restoration is
refused (this engine has no face restorers).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import image_ops
from .errors import RequestRefused
from .hires import IMAGE_UPSCALERS
from .schemas import ExtrasRequest


def _upscaler(name: str, field: str) -> str | None:
    """The upscaler's name, None for "None" (no upscaling); 404 naming the valid choices otherwise."""
    if name not in IMAGE_UPSCALERS:
        raise RequestRefused(
            404, f"{field}: upscaler {name!r} not found; available: {', '.join(IMAGE_UPSCALERS)}"
        )
    return None if name == "None" else name


def check(req: ExtrasRequest) -> None:
    """What this engine cannot do, refused before any work (A1111 answers some of it with a 500)."""
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, field):
            raise RequestRefused(400, f"{field}: face restoration is not supported by this engine")
    if req.resize_mode not in (0, 1):
        raise RequestRefused(422, f"resize_mode must be 0 (scale by) or 1 (scale to), got {req.resize_mode}")
    if not 0 < req.upscaling_resize <= 8:
        raise RequestRefused(400, f"upscaling_resize must be in (0, 8] (got {req.upscaling_resize})")
    for field in ("upscaling_resize_w", "upscaling_resize_h"):
        value = getattr(req, field)
        if not 1 <= value <= image_ops.MAX_SIDE * 2:
            raise RequestRefused(400, f"{field} must be 1..{image_ops.MAX_SIDE * 2} (got {value})")
    if not 0 <= req.extras_upscaler_2_visibility <= 1:
        raise RequestRefused(400, "extras_upscaler_2_visibility must be 0..1")
    _upscaler(req.upscaler_1, "upscaler_1")
    _upscaler(req.upscaler_2, "upscaler_2")


def _scaled(image: Image.Image, name: str, req: ExtrasRequest, info: dict[str, Any]) -> Image.Image:
    """The upscale script's ``upscale``: by a factor, or to a size (then cropped onto a black canvas)."""
    if req.resize_mode == 1:
        scale = max(req.upscaling_resize_w / image.width, req.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
    else:
        scale = req.upscaling_resize
        info["Postprocess upscale by"] = req.upscaling_resize
    _check_result_size(image, scale)
    result = image_ops.upscale(image, name, scale)
    if req.resize_mode == 1 and req.upscaling_crop:
        width, height = req.upscaling_resize_w, req.upscaling_resize_h
        cropped = Image.new("RGB", (width, height))
        cropped.paste(result, box=(width // 2 - result.width // 2, height // 2 - result.height // 2))
        result = cropped
        info["Postprocess crop to"] = f"{width}x{height}"
    return result


def _check_result_size(image: Image.Image, scale: float) -> None:
    width, height = int(image.width * scale), int(image.height * scale)
    if width * height > image_ops.MAX_INPUT_PIXELS * 4:
        raise RequestRefused(400, f"the upscaled image ({width}x{height}) would be too large")


def process(image: Image.Image, req: ExtrasRequest) -> tuple[Image.Image, str]:
    """One image through the upscale script; the image and its "postprocessing" infotext."""
    image = image if image.mode in ("RGBA", "RGB") else image.convert("RGB")
    info: dict[str, Any] = {}
    first = _upscaler(req.upscaler_1, "upscaler_1")
    if first is None:
        return image, ""
    result = _scaled(image, first, req, info)
    info["Postprocess upscaler"] = first
    second = _upscaler(req.upscaler_2, "upscaler_2")
    if second is not None and req.extras_upscaler_2_visibility > 0:
        other = _scaled(image, second, req, info)
        if other.mode != result.mode:
            other = other.convert(result.mode)
        result = Image.blend(result, other, req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = second
    return result, ", ".join(f"{k}: {v}" for k, v in info.items())


def html_info(text: str) -> str:
    """A1111's ``plaintext_to_html``."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def encode(image: Image.Image, infotext: str, opts: dict[str, Any]) -> str:
    """The result as A1111's API sends it: a PNG with the ``postprocessing`` text (other formats: as the
    generated images are encoded)."""
    if str(opts["samples_format"]).lower() != "png":
        from .images import encode_image  # torch: imported by the first use, not by the server's start

        return encode_image(image, infotext, opts)
    buffer = io.BytesIO()
    png = PngInfo()
    if infotext and opts["enable_pnginfo"]:
        png.add_text("postprocessing", infotext)
    image.save(buffer, format="PNG", pnginfo=png)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
