"""The placeholders that replace the images A1111 echoes in ``parameters.alwayson_scripts`` (worker.output.echo)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.support import input_images as ti
from worker.output.echo import placeholder, trim_echoed_images

PNG = ti.png_b64(64, 64)
JPEG = ti.jpeg_b64(64, 64)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PNG, f"<png image: {len(PNG) / 1000:.1f} kB of base64, sha256 {digest(PNG)}>"),
        (JPEG, f"<jpeg image: {len(JPEG) / 1000:.1f} kB of base64, sha256 {digest(JPEG)}>"),
        ("data:image/png;base64," + PNG, f"<png image: {(len(PNG) + 22) / 1000:.1f} kB of base64, sha256 "),
        ("A" * 1_500_000, f"<base64 data: 1.50 MB of base64, sha256 {digest('A' * 1_500_000)}>"),
        ("canny", "canny"),
        (
            "masterpiece, best quality, detailed face, " * 20,
            "masterpiece, best quality, detailed face, " * 20,
        ),
        ("control_v11p_sd15_canny [d14c016b]", "control_v11p_sd15_canny [d14c016b]"),
        ("AAAAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAAA"),  # short base64 that is no image: a name
    ],
)
def test_placeholder(text: str, expected: str) -> None:
    assert placeholder(text).startswith(expected)


def test_only_alwayson_scripts_is_touched() -> None:
    parameters: dict[str, Any] = {
        "prompt": "a portrait",
        "init_images": [PNG],  # echoed only when the job asked for them (include_init_images)
        "alwayson_scripts": {
            "controlnet": {"args": [{"enabled": True, "image": {"image": PNG, "mask": PNG}, "weight": 0.5}]},
            "ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt", "ad_prompt": "a face"}]},
        },
    }
    trimmed = trim_echoed_images(parameters)
    unit = trimmed["alwayson_scripts"]["controlnet"]["args"][0]
    assert (
        unit["image"]["image"].startswith("<png image: ") and unit["image"]["mask"] == unit["image"]["image"]
    )
    assert unit["weight"] == 0.5 and unit["enabled"] is True
    assert trimmed["alwayson_scripts"]["ADetailer"] == parameters["alwayson_scripts"]["ADetailer"]
    assert trimmed["init_images"] == [PNG] and trimmed["prompt"] == "a portrait"
    assert parameters["alwayson_scripts"]["controlnet"]["args"][0]["image"]["image"] == PNG  # not modified
    assert trim_echoed_images({"prompt": "x", "alwayson_scripts": {}}) == {
        "prompt": "x",
        "alwayson_scripts": {},
    }
    assert trim_echoed_images("not an object") == "not an object"
