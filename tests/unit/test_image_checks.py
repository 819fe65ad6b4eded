"""Input images are hostile until proven otherwise: each case says which image is refused and why."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from tests.support import input_images as ti
from worker.errors import InputInvalid
from worker.image_jobs import Img2ImgJob
from worker.input_images.check import ImageLimits, check_image
from worker.input_images.prepare import mask_fits
from worker.input_images.source import Base64Source

LIMITS = ImageLimits(max_bytes=2_000_000, max_pixels=4096 * 4096)
PNG = ti.png_bytes(64, 48)
JPEG = ti.jpeg_bytes(64, 64)


def _cut(raw: bytes, keep: int) -> str:
    return ti.b64(raw[:keep])


@pytest.mark.parametrize(
    ("name", "build", "fmt", "mode", "size", "sent"),
    [
        ("png", lambda: ti.b64(PNG), "PNG", "RGB", (64, 48), ti.b64(PNG)),
        (
            "data URI prefix stripped",
            lambda: "data:image/png;base64," + ti.b64(PNG),
            "PNG",
            "RGB",
            (64, 48),
            ti.b64(PNG),
        ),
        (
            "data URI any image type",
            lambda: "DATA:image/jpeg;base64," + ti.b64(PNG),
            "PNG",
            "RGB",
            (64, 48),
            ti.b64(PNG),
        ),
        (
            "line-wrapped base64",
            lambda: "\n".join(ti.b64(PNG)[i : i + 76] for i in range(0, 400, 76)),
            "PNG",
            "RGB",
            (64, 48),
            ti.b64(PNG),
        ),
        ("rgba", lambda: ti.png_b64(32, 32, mode="RGBA"), "PNG", "RGBA", (32, 32), None),
        ("palette", lambda: ti.png_b64(32, 32, mode="P"), "PNG", "P", (32, 32), None),
        ("grayscale", lambda: ti.png_b64(32, 32, mode="L"), "PNG", "L", (32, 32), None),
        ("cmyk jpeg", lambda: ti.jpeg_b64(40, 24, mode="CMYK"), "JPEG", "CMYK", (40, 24), None),
        (
            "16-bit rgb png (Pillow reads it as 8-bit RGB)",
            lambda: ti.b64(ti.png16_rgb_bytes()),
            "PNG",
            "RGB",
            (16, 16),
            None,
        ),
        ("webp", lambda: ti.b64(ti.webp_bytes(30, 20)), "WEBP", "RGB", (30, 20), None),
        (
            "exif orientation 6 swaps the sides",
            lambda: ti.jpeg_b64(48, 64, orientation=6),
            "JPEG",
            "RGB",
            (64, 48),
            None,
        ),
        (
            "exif orientation 3 keeps them",
            lambda: ti.jpeg_b64(48, 64, orientation=3),
            "JPEG",
            "RGB",
            (48, 64),
            None,
        ),
        (
            "png eXIf orientation 8",
            lambda: ti.b64(ti.png_with_exif_orientation(40, 20, 8)),
            "PNG",
            "RGB",
            (20, 40),
            None,
        ),
    ],
)
def test_accepted_images(
    name: str, build: Callable[[], str], fmt: str, mode: str, size: tuple[int, int], sent: str | None
) -> None:
    checked = check_image(build(), "init_images[0]", LIMITS)
    assert (checked.format, checked.mode, checked.size) == (fmt, mode, size)
    if sent is not None:
        assert checked.base64 == sent  # passed on as given, less the prefix: never re-encoded


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("bad base64", "not an image!", "not base64"),
        ("url-safe base64", ti.b64(PNG).replace("/", "_").replace("+", "-") + "_-", "not base64"),
        ("empty", "  ", "no image data"),
        ("empty bytes", "", "no image data"),
        ("text data URI", "data:text/plain;base64,aGVsbG8=", "a data URI of 'text/plain'"),
        ("data URI without base64", "data:image/png,abc", "without ;base64"),
        ("not an image", base64.b64encode(b"hello world, plain text").decode(), "not a PNG, JPEG or WebP"),
        ("gif", ti.b64(ti.other_format_bytes("GIF")), "a GIF image: send PNG, JPEG or WebP"),
        ("bmp", ti.b64(ti.other_format_bytes("BMP")), "a BMP image"),
        ("tiff", ti.b64(ti.other_format_bytes("TIFF")), "a TIFF image"),
        ("truncated png (inside IDAT)", _cut(PNG, len(PNG) // 2), "ends inside its IDAT chunk"),
        ("truncated png (no IEND)", _cut(PNG, len(PNG) - 12), "ends before its IEND chunk"),
        ("png header only", _cut(PNG, 20), "truncated or corrupt PNG"),
        ("truncated jpeg", _cut(JPEG, len(JPEG) - 40), "no end-of-image marker"),
        ("jpeg header only", _cut(JPEG, 100), "truncated or corrupt JPEG"),
        ("truncated webp", _cut(ti.webp_bytes(64, 64), 60), "truncated or corrupt WEBP"),
        ("decompression bomb", ti.b64(ti.bomb_png()), "12000x12000 = 144,000,000 pixels, over the limit"),
        ("declares 10 gigapixels", ti.b64(ti.png_declaring(100_000, 100_000)), "a decompression bomb"),
        ("16-bit grayscale", ti.b64(ti.png16_gray_bytes()), "16-bit grayscale image (mode I"),
        (
            "over the byte cap",
            ti.b64(b"\x89PNG" + b"\0" * 2_100_000),
            "over the limit of 2,000,000 (WORKER_IMAGE_MAX_BYTES)",
        ),
    ],
)
def test_refused_images(name: str, text: str, reason: str) -> None:
    with pytest.raises(InputInvalid) as caught:
        check_image(text, "init_images[1]", LIMITS)
    assert caught.value.message.startswith("init_images[1]: ")
    assert reason in caught.value.message
    assert caught.value.message.endswith("nothing was generated")


def test_the_pixel_cap_is_a_setting() -> None:
    with pytest.raises(InputInvalid, match="64x48 = 3,072 pixels, over the limit of 3,000"):
        check_image(ti.b64(PNG), "mask", ImageLimits(max_bytes=10**6, max_pixels=3000))


def _job(**fields: object) -> Img2ImgJob:
    return Img2ImgJob.model_validate({"init_images": ["x"], "mask": "y", **fields})


def _image(width: int, height: int, where: str) -> object:
    return check_image(ti.png_b64(width, height), where, LIMITS)


@pytest.mark.parametrize(
    ("mask_size", "fields", "outcome"),
    [
        ((64, 48), {}, None),
        ((32, 24), {}, "inpaint the wrong place"),
        ((32, 24), {"inpaint_full_res": False}, "A1111 resizes both to 512x512"),
        ((32, 24), {"inpaint_full_res": False, "resize_mode": 1}, "A1111 resizes both"),
        ((32, 32), {"inpaint_full_res": False}, "A1111 resizes both"),  # resize_mode 0 stretches both alike
        ((32, 32), {"inpaint_full_res": False, "resize_mode": 2}, "would not line up"),
        ((32, 32), {"inpaint_full_res": False, "resize_mode": 3}, "would not line up"),
    ],
)
def test_a_mask_of_another_size(
    mask_size: tuple[int, int], fields: dict[str, object], outcome: str | None
) -> None:
    init, mask = _image(64, 48, "init_images[0]"), _image(*mask_size, "mask")
    if outcome is None:
        assert mask_fits(init, mask, _job(**fields)) == []  # type: ignore[arg-type]
    elif "A1111 resizes" in outcome:
        assert outcome in mask_fits(init, mask, _job(**fields))[0]  # type: ignore[arg-type]
    else:
        with pytest.raises(InputInvalid, match=outcome) as caught:
            mask_fits(init, mask, _job(**fields))  # type: ignore[arg-type]
        assert caught.value.message.startswith("mask: mask is ")


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 100, 4097])
def test_a_base64_text_reads_by_range_as_its_bytes(size: int) -> None:
    raw = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    source = Base64Source(ti.b64(raw), "image")
    assert source.size == len(raw)
    for start in range(0, size + 2, max(1, size // 7)):
        for end in (start, start + 1, start + 2, start + 3, start + 5, size, size + 4):
            assert source.read(start, end) == raw[start:end], (start, end)
