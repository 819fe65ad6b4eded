"""The fake A1111's image endpoints against the transcripts recorded from the real A1111 v1.10.1.

Every image exchange ``scripts/record_a1111_images.py`` recorded (img2img, inpainting in each fill mode,
extras, png-info, interrogation without weights, and the errors of bad images) is replayed in order against a
fresh fake serving the recorded models (the recording ran on a fresh A1111); it must answer the same.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from tests.support.a1111_behaviour import transcript
from tests.support.fake_a1111 import FakeA1111
from tests.support.input_images import sizes_of
from tests.worker.test_fake_transcripts import AUTH, recorded_fake

__all__ = ["recorded_fake"]  # the fixture
_RANDOM = {"seed": ("seed", "all_seeds", "infotexts"), "subseed": ("subseed", "all_subseeds")}


def send_image_exchange(fake: FakeA1111, exchange: dict[str, Any]) -> tuple[int, Any]:
    response = requests.post(
        f"{fake.url}/sdapi/v1/{exchange['endpoint']}", json=exchange["body"], auth=AUTH, timeout=30
    )
    payload = response.json() if response.content else None
    if response.status_code != 200:
        return response.status_code, payload
    if exchange["endpoint"] == "img2img":
        payload = {
            "images": sizes_of(payload["images"]),
            "parameters": payload["parameters"],
            "info": json.loads(payload["info"]),
        }
        payload["info"].pop("job_timestamp")
    elif exchange["endpoint"].startswith("extra-"):
        images = payload["images"] if "images" in payload else [payload["image"]]
        payload = {"images": sizes_of(images), "html_info": payload["html_info"]}
    return response.status_code, payload


def _recorded(exchange: dict[str, Any]) -> Any:
    response = json.loads(json.dumps(exchange["response"]))
    if exchange["endpoint"] == "img2img" and exchange["status"] == 200:
        response["info"].pop("job_timestamp")
        for field, keys in _RANDOM.items():  # a random seed: the fake draws another
            if exchange["body"].get(field, -1) == -1:
                for key in keys:
                    response["info"].pop(key)
    return response


def test_every_recorded_image_exchange_is_reproduced_in_order(recorded_fake: FakeA1111) -> None:
    for exchange in transcript("images"):
        status, payload = send_image_exchange(recorded_fake, exchange)
        wanted = _recorded(exchange)
        if exchange["endpoint"] == "img2img" and status == 200:
            payload["info"] = {k: v for k, v in payload["info"].items() if k in wanted["info"]}
        assert (status, payload) == (exchange["status"], wanted), exchange["name"]
