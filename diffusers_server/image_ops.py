"""A1111's pixel operations on input images: decoding, resize modes, masks, crop regions, fill and paste-back.

Written after A1111 v1.10.1 ``modules/images.py`` (``resize_image``, ``flatten``, ``read``),
``modules/masking.py`` and ``modules/processing.py`` (``create_binary_mask``, ``apply_overlay``), with the
same PIL calls, so the engine's img2img starts from the same pixels as A1111's.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .errors import RequestRefused

LANCZOS = Image.Resampling.LANCZOS
MAX_SIDE = 4096
#: A1111's img2img ``resize_mode`` values
RESIZE_MODES = {
    0: "Just resize",
    1: "Crop and resize",
    2: "Resize and fill",
    3: "Just resize (latent upscale)",
}
#: the most pixels an input image may have (checked from its header, before decoding: no decompression bombs)
MAX_INPUT_PIXELS = MAX_SIDE * MAX_SIDE

Box = tuple[int, int, int, int]


def decode_image(encoded: str, field: str) -> Image.Image:
    """A1111's ``decode_base64_to_image`` (data-URI prefix allowed) and ``images.read`` (EXIF orientation
    applied, palette/RGB transparency kept as RGBA); a 400 naming ``field`` for what A1111 answers with a 500.
    URLs are refused: this engine never downloads."""
    if encoded.startswith(("http://", "https://")):
        raise RequestRefused(400, f"{field}: image URLs are not fetched by this engine; send base64")
    if encoded.startswith("data:image/"):
        encoded = encoded.split(";")[1].split(",")[1]
    try:
        image: Image.Image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise RequestRefused(
                400, f"{field}: {image.width}x{image.height} is more than {MAX_INPUT_PIXELS} pixels"
            )
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise RequestRefused(400, f"{field}: not a decodable image ({type(exc).__name__})") from exc
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGB", "P") and isinstance(image.info.get("transparency"), bytes):
        image = image.convert("RGBA")
    return image


def flatten(image: Image.Image, background: str) -> Image.Image:
    """Transparency replaced by ``background`` (A1111's ``img2img_background_color``), as RGB."""
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, background)
        canvas.paste(image, mask=image)
        image = canvas
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 ``images.resize_image`` with its default img2img upscaler (none: Lanczos): 0 stretch, 1 cover
    and crop the centre, 2 fit and fill the borders with the edge rows/columns stretched."""
    if mode == 0:
        return image.resize((width, height), resample=LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    else:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=LANCZOS)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2:
        _fill_borders(result, resized, ratio, src_ratio)
    return result


def _fill_borders(result: Image.Image, resized: Image.Image, ratio: float, src_ratio: float) -> None:
    width, height = result.size
    src_w, src_h = resized.size
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            bottom = resized.resize((width, fill), box=(0, src_h, width, src_h))
            result.paste(bottom, box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            right = resized.resize((fill, height), box=(src_w, 0, src_w, height))
            result.paste(right, box=(fill + src_w, 0))


def binary_mask(image: Image.Image, round_mask: bool) -> Image.Image:
    """A1111 ``create_binary_mask``: an RGBA mask with transparency is its alpha (thresholded at 128 when
    rounding); anything else is its luminance."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.split()[-1].convert("L")
        return alpha.point(lambda x: 255 if x > 128 else 0) if round_mask else alpha
    return image.convert("L")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's bit-exact 8-bit Gaussian kernel for A1111's size ``2 * int(2.5 * sigma + 0.5) + 1``: the
    normalised Gaussian in 8-bit fixed point, rounded with the error carried from the ends inwards, the
    centre taking what makes the sum exactly 256 (``getGaussianKernelFixedPoint_ED``)."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(x**2) / (2 * sigma * sigma))
    weights /= weights.sum()
    fixed = np.zeros(size, dtype=np.int64)
    carried = 0.0
    for i in range(size // 2):
        value = weights[i] * 256 + carried
        fixed[i] = fixed[size - 1 - i] = round(value)
        carried = value - fixed[i]
    fixed[size // 2] = 256 - 2 * int(fixed[: size // 2].sum())
    return fixed


def blur_mask(mask: Image.Image, sigma_x: int, sigma_y: int) -> Image.Image:
    """A1111's mask blur: ``cv2.GaussianBlur`` along x, then along y, bit for bit (OpenCV's fixed-point
    8-bit path: mirrored borders without repeating the edge, the sum of 8-bit fixed-point products rounded
    half up after each pass)."""
    array = np.asarray(mask.convert("L"), dtype=np.int64)
    for axis, sigma in ((1, sigma_x), (0, sigma_y)):
        if sigma <= 0:
            continue
        kernel = _gaussian_kernel(sigma)
        pad = len(kernel) // 2
        widths = [(0, 0), (0, 0)]
        widths[axis] = (pad, pad)
        padded = np.pad(array, widths, mode="reflect")
        total = np.zeros_like(array)
        for i, weight in enumerate(kernel):
            window = padded[:, i : i + array.shape[1]] if axis == 1 else padded[i : i + array.shape[0], :]
            total += int(weight) * window
        array = (total + 128) >> 8
    return Image.fromarray(array.astype(np.uint8))


def crop_region(mask: Image.Image, pad: int) -> Box | None:
    """A1111 ``masking.get_crop_region_v2``: the box around the mask's non-zero pixels, padded; None if
    the mask is empty."""
    box = mask.getbbox()
    if box is None:
        return None
    if not pad:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def _expand(lo: int, hi: int, grow: int, limit: int) -> tuple[int, int]:
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_crop_region(box: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """A1111 ``masking.expand_crop_region``: grow the box to the processing size's aspect ratio, kept inside
    the image."""
    x1, y1, x2, y2 = box
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _expand(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), image_height)
    else:
        x1, x2 = _expand(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), image_width)
    return x1, y1, x2, y2


def masked_out(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image where ``mask`` is black, transparent where it is white (premultiplied, as A1111 pastes)."""
    result = Image.new("RGBa", image.size)
    result.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return result


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 ``masking.fill`` (inpainting_fill 0): the masked area replaced by finer and finer blurs."""
    result = Image.new("RGBA", image.size)
    masked = masked_out(image, mask).convert("RGBa")
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def apply_overlay(image: Image.Image, paste_to: Box | None, overlay: Image.Image) -> Image.Image:
    """A1111 ``apply_overlay``: an only-masked result resized into its box of the full image (``uncrop``),
    then the original's unmasked pixels composited over it."""
    if paste_to is not None:
        x, y, w, h = paste_to
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(resize_image(1, image, w, h), (x, y))
        image = canvas
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


def upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
    """A1111 ``Upscaler.upscale`` with a built-in upscaler (``Lanczos``/``Nearest``): up to three
    ``do_upscale`` rounds of ``scale`` until the image covers the target (its sides rounded down to a
    multiple of 8), then Lanczos to exactly that target."""
    resample = Image.Resampling.NEAREST if name == "Nearest" else LANCZOS
    dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
    for i in range(3):
        if image.width >= dest[0] and image.height >= dest[1] and (i > 0 or scale != 1):
            break
        before = image.size
        image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        if image.size == before:
            break
    if image.size != dest:
        image = image.resize(dest, resample=LANCZOS)
    return image
