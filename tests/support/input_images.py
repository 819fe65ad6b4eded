"""Small, deterministic input images for img2img, masks, extras and png-info, and the hostile ones.

Built with Pillow at test time (nothing binary is committed); the same builders make the recorded A1111
transcripts' inputs (``scripts/record_a1111_images.py``), so a replay sends byte-identical images.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image, PngImagePlugin

INFOTEXT = (
    "a lighthouse\nNegative prompt: blurry\n"
    "Steps: 2, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 11, Size: 64x64, "
    "Model hash: 0123456789, Model: tiny_a, Version: v1.10.1"
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def sizes_of(images: list[str]) -> list[dict[str, int]]:
    """The width and height of each base64 image (how transcripts keep an engine's images)."""
    sizes = []
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            sizes.append({"width": image.width, "height": image.height})
    return sizes


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth picture (compresses to little) whose every pixel differs."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), 128)
            for y in range(height)
            for x in range(width)
        ]
    )
    if mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize((width, height)))
        return image
    return image.convert(mode)


def png_bytes(width: int, height: int, *, mode: str = "RGB", parameters: str | None = None) -> bytes:
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    gradient(width, height, mode).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_b64(width: int, height: int, *, mode: str = "RGB", parameters: str | None = None) -> str:
    return b64(png_bytes(width, height, mode=mode, parameters=parameters))


def mask_png_b64(width: int, height: int, *, blank: bool = False, alpha: bool = False) -> str:
    """White (inpaint) in the middle half, black elsewhere; ``alpha``: the same as an RGBA alpha channel."""
    mask = Image.new("L", (width, height), 0)
    if not blank:
        mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    image = mask
    if alpha:
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        image.putalpha(mask)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return b64(buf.getvalue())


def jpeg_bytes(width: int, height: int, *, mode: str = "RGB", orientation: int | None = None) -> bytes:
    """A JPEG; ``orientation`` stores an EXIF orientation tag (6: to be shown rotated 90 degrees)."""
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    gradient(width, height).convert(mode).save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def jpeg_b64(width: int, height: int, *, mode: str = "RGB", orientation: int | None = None) -> str:
    return b64(jpeg_bytes(width, height, mode=mode, orientation=orientation))


def webp_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    gradient(width, height).save(buf, format="WEBP", quality=80)
    return buf.getvalue()


def other_format_bytes(fmt: str, width: int = 16, height: int = 16) -> bytes:
    buf = io.BytesIO()
    gradient(width, height).save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(
    width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, rows: bytes = b""
) -> bytes:
    """A PNG whose header declares ``width`` x ``height``: a decompression bomb when ``rows`` is small."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def bomb_png(side: int = 12_000) -> bytes:
    """A real decompression bomb: ``side`` x ``side`` grayscale zeros (144 MB of pixels), 140 kB compressed."""
    rows = b"\x00" * (side + 1) * 500
    compressor = zlib.compressobj(6)
    body = b"".join(compressor.compress(rows) for _ in range(side // 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def png16_gray_bytes(width: int = 16, height: int = 16) -> bytes:
    rows = b"".join(
        b"\x00" + struct.pack(f">{width}H", *[(x * 4000) % 65536 for x in range(width)])
        for _ in range(height)
    )
    return png_declaring(width, height, bit_depth=16, color_type=0, rows=rows)


def png16_rgb_bytes(width: int = 16, height: int = 16) -> bytes:
    rows = b"".join(
        b"\x00" + struct.pack(f">{width * 3}H", *[(i * 1000) % 65536 for i in range(width * 3)])
        for _ in range(height)
    )
    return png_declaring(width, height, bit_depth=16, color_type=2, rows=rows)


def png_with_exif_orientation(width: int, height: int, orientation: int) -> bytes:
    """A PNG with an ``eXIf`` chunk (Pillow writes it before the image data)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    gradient(width, height).save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()
