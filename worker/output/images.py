"""The engine's images in the format a job asked for: PNG passed through untouched, or JPEG/WebP re-encoded.

PNG output is A1111's own bytes: decoding and re-encoding an image the worker only forwards would cost tens
of milliseconds per megapixel for nothing. Pillow is imported only when an image is converted.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from worker.errors import EngineFailed
from worker.output.threads import map_in_threads
from worker.schema import OutputFormat, OutputOptions

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

log = logging.getLogger(__name__)

# EXIF: the Exif sub-IFD pointer, its UserComment tag, and the 8-byte charset header A1111 (piexif's
# UserComment.dump(..., encoding="unicode")) writes before the UTF-16-BE text.
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
# A JPEG APP1 segment holds at most 65,535 bytes including its length and the "Exif\0\0" header.
_JPEG_EXIF_MAX = 65_527


def decode_image(data: Any, index: int) -> bytes:
    """Decode one engine image; anything that is not base64 is the engine's fault."""
    if not isinstance(data, str):
        raise EngineFailed(f"image {index} from the engine is a {type(data).__name__}, not a base64 string")
    if data.startswith("data:"):  # tolerate a data URL, as some A1111 forks send
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise EngineFailed(f"image {index} from the engine is not valid base64 ({len(data)} chars)") from None


def sniff_format(raw: bytes) -> str | None:
    """The real format of ``raw``, so an upload is labelled by what it is, not what was asked."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    return None


# ----------------------------------------------------------------------------------------------
# conversion


def convert_images(
    images_b64: list[str], options: OutputOptions, warnings: list[str] | None = None
) -> list[str]:
    """Re-encode the engine's images to ``options.format``, keeping A1111's infotext.

    ``png`` returns ``images_b64`` itself: nothing is decoded. ``jpeg``/``webp`` decode with Pillow,
    drop alpha (RGBA→RGB, as A1111 does), and store the PNG ``parameters`` text in EXIF UserComment
    the way A1111 writes it, so PNG-info readers still find the generation parameters.

    Args:
        warnings: when given, a line is appended for each infotext that could not be kept.

    Raises:
        EngineFailed: an image is not base64 or not a readable image.
    """
    if options.format == "png" or not images_b64:
        return images_b64

    def one(item: tuple[int, str]) -> tuple[str, str | None]:
        return _convert_one(item[1], item[0], options.format, options.quality)

    started = time.perf_counter()
    # Pillow releases the GIL while encoding
    results = map_in_threads(one, list(enumerate(images_b64)), max_workers=min(os.cpu_count() or 1, 4))
    converted = [b64 for b64, _ in results]
    if warnings is not None:
        warnings.extend(warning for _, warning in results if warning)
    log.info(
        "converted %d image(s) to %s q%d in %.0f ms",
        len(converted),
        options.format,
        options.quality,
        (time.perf_counter() - started) * 1000,
    )
    return converted


def _convert_one(b64: str, index: int, fmt: OutputFormat, quality: int) -> tuple[str, str | None]:
    from PIL import Image

    raw = decode_image(b64, index)
    try:
        source = Image.open(io.BytesIO(raw))
        source.load()  # text chunks after IDAT only appear in .info once loaded
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise EngineFailed(f"image {index} from the engine is not a readable image: {exc}") from None
    with source:
        infotext = _read_infotext(source)
        image = source if source.mode == "RGB" else source.convert("RGB")
        return _encode(image, index, fmt, quality, infotext)


def _read_infotext(image: PILImage) -> str | None:
    """A1111's parameters text: the PNG ``parameters`` chunk, or an existing EXIF UserComment."""
    text = image.info.get("parameters")
    if isinstance(text, str) and text:
        return text
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(comment, bytes) and len(comment) > 8:
        body = comment[8:]
        if comment.startswith(_UNICODE_PREFIX):
            return body.decode("utf-16-be", errors="replace").rstrip("\x00") or None
        return body.decode("utf-8", errors="replace").rstrip("\x00") or None
    return None


def _exif_with_comment(infotext: str) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE_PREFIX + infotext.encode("utf-16-be", errors="replace")
    return exif.tobytes()


def _encode(
    image: PILImage, index: int, fmt: OutputFormat, quality: int, infotext: str | None
) -> tuple[str, str | None]:
    warning = None
    exif = _exif_with_comment(infotext) if infotext else b""
    if fmt == "jpeg" and len(exif) > _JPEG_EXIF_MAX:
        warning = (
            f"image {index}: its generation parameters ({len(infotext or '')} characters) do not fit "
            "in JPEG EXIF and were left out of the file; they are still in 'info'. Use output.format "
            "'webp' or 'png' to keep them in the image"
        )
        exif = b""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if fmt == "jpeg" else "WEBP", quality=quality, exif=exif)
    return base64.b64encode(buffer.getvalue()).decode("ascii"), warning
