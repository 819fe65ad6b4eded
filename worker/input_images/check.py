"""One input image (init image, mask, extras or png-info image), hostile until proven otherwise.

What reaches the engine has been shown to be a PNG, JPEG or WebP of a bounded size, read from its header and
structure only: nothing is decoded to pixels, and the base64 only where the checks read
(``worker.input_images.source``), so a 4096x4096 image costs neither 50 MB of pixels nor a copy of its bytes,
and a decompression bomb is refused from the size it declares. The text is passed on as it came (less a
data-URI prefix): never decoded and re-encoded.

How A1111 v1.10.1 reads an image (``modules/api/api.py`` ``decode_base64_to_image``, ``modules/images.py``
``read``/``fix_image``/``flatten``) decides what is accepted:

* a ``data:image/...;base64,`` prefix is stripped; the rest is base64 (any Pillow format);
* the EXIF orientation is applied (``ImageOps.exif_transpose``): a portrait photo stored landscape is
  portrait to A1111, so sizes here are the upright ones;
* a palette image with transparency becomes RGBA; RGBA is flattened on the background colour; everything
  is then ``convert("RGB")``: CMYK and 16-bit RGB convert correctly, but 16-bit grayscale (Pillow mode
  ``I``) is clipped at 255, which turns it nearly white: refused here, with the reason.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from worker.input_images.refusal import refuse
from worker.input_images.source import Base64Source, BytesSource, ImageSource, SourceFile
from worker.output.images import sniff_format

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
#: Pillow modes of 16-bit (or 32-bit) grayscale: A1111's ``convert("RGB")`` clips them at 255
_CLIPPED_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_DATA_URI = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 or 270 degrees: width and height swap
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageLimits:
    """``WORKER_IMAGE_MAX_BYTES`` (one decoded image) and ``WORKER_IMAGE_MAX_PIXELS`` (as declared)."""

    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed every check; ``width``/``height`` as A1111 sees it (EXIF orientation applied)."""

    where: str
    base64: str
    format: str
    mode: str
    width: int
    height: int
    byte_count: int
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def strip_data_uri(text: str, where: str) -> str:
    """``data:image/png;base64,AAAA`` → ``AAAA``; a data URI of something else, or not base64, is refused."""
    found = _DATA_URI.match(text)
    if found is None:
        return text
    media, parameters = found.group(1).lower(), found.group(2).lower()
    if not media.startswith("image/"):
        raise refuse(where, f"a data URI of {media or 'no type'!r}, not an image (data:image/png;base64,...)")
    if ";base64" not in parameters:
        raise refuse(where, "a data URI without ;base64: only base64 data URIs are accepted")
    return text[found.end() :]


def _base64_source(text: str, where: str, limits: ImageLimits) -> Base64Source:
    """The text as a source; the byte cap is checked before anything is decoded."""
    if any(space in text for space in ("\n", "\r", " ", "\t")):
        text = "".join(text.split())  # line-wrapped (MIME) base64 is still base64
    estimated = len(text) * 3 // 4
    if estimated > limits.max_bytes + 3:
        raise refuse(
            where,
            f"{estimated:,} bytes of image, over the limit of {limits.max_bytes:,} (WORKER_IMAGE_MAX_BYTES)",
        )
    return Base64Source(text, where)


def check_image_bytes(raw: bytes, where: str, limits: ImageLimits) -> tuple[str, str, int, int, int]:
    """``check_source`` for bytes in hand (a fetched URL)."""
    return check_source(BytesSource(raw), where, limits)


def check_source(source: ImageSource, where: str, limits: ImageLimits) -> tuple[str, str, int, int, int]:
    """Format, mode, upright width and height, and EXIF orientation, from the header and structure only.

    Raises:
        InputInvalid: naming ``where`` and what is wrong (type, truncation, size, mode).
    """
    if source.size > limits.max_bytes:
        raise refuse(
            where,
            f"{source.size:,} bytes of image, over the limit of {limits.max_bytes:,} "
            "(WORKER_IMAGE_MAX_BYTES)",
        )
    if not source.size:
        raise refuse(where, "no image bytes (empty)")
    with _open(source, where, limits) as image:
        fmt, mode, (width, height) = str(image.format), image.mode, image.size
        if fmt not in ACCEPTED_FORMATS:
            raise refuse(where, f"a {fmt} image: send PNG, JPEG or WebP")
        _check_pixels(where, width, height, limits)
        _check_complete(source, fmt, where)
        if mode in _CLIPPED_MODES:
            raise refuse(
                where,
                f"a 16-bit grayscale image (mode {mode}): A1111 converts it to RGB by clipping every value "
                "above 255, which turns it nearly white; save it as 8-bit",
            )
        orientation = _orientation(image, source, fmt)
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return fmt, mode, width, height, orientation


def _open(source: ImageSource, where: str, limits: ImageLimits) -> Image.Image:
    """Pillow's lazy open: the header only, read through the source."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BufferedReader(SourceFile(source), buffer_size=16384))
        except Image.DecompressionBombError:
            raise refuse(
                where,
                f"declares over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, over the limit of "
                f"{limits.max_pixels:,} (WORKER_IMAGE_MAX_PIXELS): a decompression bomb",
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            head = source.read(0, 12)
            signed = sniff_format(head)
            if signed:
                raise refuse(
                    where, f"a truncated or corrupt {signed.upper()}: its header cannot be read"
                ) from None
            raise refuse(where, f"not a PNG, JPEG or WebP image (starts with {head[:8]!r})") from None


def check_image(text: str, where: str, limits: ImageLimits) -> CheckedImage:
    """A base64 image (data-URI prefix allowed), checked; see the module docstring."""
    if not text.strip():
        raise refuse(where, "no image data (an empty string)")
    source = _base64_source(strip_data_uri(text.strip(), where), where, limits)
    fmt, mode, width, height, orientation = check_source(source, where, limits)
    return CheckedImage(
        where=where,
        base64=source.text,
        format=fmt,
        mode=mode,
        width=width,
        height=height,
        byte_count=source.size,
        orientation=orientation,
    )


def _check_pixels(where: str, width: int, height: int, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise refuse(where, f"declares a {width}x{height} image")
    if width * height > limits.max_pixels:
        raise refuse(
            where,
            f"declares {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_pixels:,} (WORKER_IMAGE_MAX_PIXELS): too large, or a decompression bomb",
        )


def _check_complete(source: ImageSource, fmt: str, where: str) -> None:
    """The file's structure is whole (a truncated upload fails inside A1111 with a bare 500 otherwise)."""
    problem = {"PNG": _png_problem, "JPEG": _jpeg_problem, "WEBP": _webp_problem}[fmt](source)
    if problem:
        raise refuse(where, f"a truncated or corrupt {fmt} ({problem})")


def _png_chunks(source: ImageSource) -> list[tuple[bytes, int, int]]:
    """(type, data start, data end) of each whole chunk, walking lengths only (no CRC, no decompression).

    A chunk that runs past the end of the data is listed with ``end`` past ``source.size``, and ends the walk.
    """
    chunks = []
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= source.size:
        length, kind = struct.unpack(">I4s", source.read(offset, offset + 8))
        start, end = offset + 8, offset + 8 + length
        chunks.append((kind, start, end))
        if kind == b"IEND" or end + 4 > source.size:
            break
        offset = end + 4
    return chunks


def _png_problem(source: ImageSource) -> str | None:
    chunks = _png_chunks(source)
    kind, _, end = chunks[-1] if chunks else (b"", 0, 0)
    if end + 4 > source.size:
        return f"it ends inside its {kind.decode('latin-1')} chunk"
    if b"IDAT" not in [chunk[0] for chunk in chunks]:
        return "it holds no image data"
    if kind != b"IEND":
        return "it ends before its IEND chunk"
    return None


def _jpeg_problem(source: ImageSource) -> str | None:
    # The end-of-image marker; only markers carry 0xFF 0xD9 (entropy-coded 0xFF bytes are stuffed with 0x00).
    if b"\xff\xd9" not in source.read(source.size - 65536, source.size):
        return "no end-of-image marker"
    return None


def _webp_problem(source: ImageSource) -> str | None:
    head = source.read(0, 8)
    declared = struct.unpack("<I", head[4:8])[0] + 8 if len(head) == 8 else 0
    if source.size < declared:
        return f"{source.size:,} bytes of the {declared:,} its RIFF header declares"
    return None


def _orientation(image: Image.Image, source: ImageSource, fmt: str) -> int:
    """The EXIF orientation A1111's ``exif_transpose`` applies (1 = upright), read without decoding pixels."""
    exif = Image.Exif()
    try:
        if fmt == "PNG":
            chunks = _png_chunks(source)
            chunk = next(((s, e) for kind, s, e in chunks if kind == b"eXIf" and e <= source.size), None)
            if chunk is None:
                return 1
            exif.load(source.read(*chunk))
        else:
            exif = image.getexif()
        value = exif.get(_EXIF_ORIENTATION, 1)
    except Exception:  # A1111 ignores unreadable EXIF too (fix_image catches everything)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
