"""The fake A1111 against the golden transcripts recorded from the real A1111 v1.10.1.

CI cannot run A1111; this is how it guards what the worker relies on. Every request the recorder sent
(scripts/record_a1111_transcripts.py) is replayed, in the same order, against a fake serving the
recorded models, and must get the same answer: listings, txt2img ``info`` and infotexts (including the
quirks: silent sampler fallback, ignored LoRAs, settings that stick), error bodies, ``/progress``.
A change to the fake that drifts from A1111, or a re-recording that shows A1111 behaving differently,
fails here.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from tests.support.a1111_behaviour import transcript
from tests.support.fake_a1111 import FakeA1111, FakeData

META = transcript("meta")
AUTH = tuple(META["auth"].split(":", 1))


@pytest.fixture
def recorded_fake() -> Iterator[FakeA1111]:
    """A fake in the recorder's starting state: its models, options, hashes and --api-auth."""
    fake = FakeA1111(png_size=None)
    fake.data = FakeData.recorded()
    fake.auth = (AUTH[0], AUTH[1])
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def send(fake: FakeA1111, exchange: dict[str, Any]) -> tuple[int, Any]:
    response = requests.request(
        exchange["method"],
        f"{fake.url}/sdapi/v1/{exchange['endpoint']}",
        json=exchange["body"],
        auth=AUTH if exchange["authenticated"] else None,
        timeout=30,
    )
    payload = response.json() if response.content else None
    if exchange["endpoint"] == "txt2img" and response.status_code == 200:
        sizes = []
        for data in payload["images"]:
            with Image.open(io.BytesIO(base64.b64decode(data))) as image:
                sizes.append({"width": image.width, "height": image.height})
        payload = {"images": sizes, "parameters": payload["parameters"], "info": json.loads(payload["info"])}
        payload["info"].pop("job_timestamp")
    return response.status_code, payload


def expected(exchange: dict[str, Any]) -> Any:
    response = json.loads(json.dumps(exchange["response"]))
    if exchange["endpoint"] == "txt2img" and exchange["status"] == 200:
        response["info"].pop("job_timestamp")
    return response


def test_listings_are_served_as_recorded(recorded_fake: FakeA1111) -> None:
    for name, recorded in transcript("listings").items():
        got = requests.get(f"{recorded_fake.url}/sdapi/v1/{name}", auth=AUTH, timeout=10)
        assert got.status_code == 200, name
        assert got.json() == recorded, name


def test_every_recorded_exchange_is_reproduced_in_order(recorded_fake: FakeA1111) -> None:
    for exchange in transcript("exchanges"):
        status, payload = send(recorded_fake, exchange)
        assert (status, payload) == (exchange["status"], expected(exchange)), exchange["name"]


def test_progress_has_a1111s_shape_and_keeps_the_interrupt(recorded_fake: FakeA1111) -> None:
    recorded = transcript("progress")

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        return type(value).__name__

    url = f"{recorded_fake.url}/sdapi/v1/progress"
    idle = requests.get(url, auth=AUTH, timeout=10).json()
    assert shape(idle) == shape(recorded["idle"])
    recorded_fake.txt2img_delay = 5
    with requests.Session() as session:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(
                session.post,
                f"{recorded_fake.url}/sdapi/v1/txt2img",
                json={"prompt": "a", "steps": 60},
                auth=AUTH,
                timeout=30,
            )
            running = requests.get(url, auth=AUTH, timeout=10).json()
            for _ in range(50):
                if running["state"]["job_count"]:
                    break
                running = requests.get(url, auth=AUTH, timeout=10).json()
            requests.post(f"{recorded_fake.url}/sdapi/v1/interrupt", auth=AUTH, timeout=10)
            assert job.result().status_code == 200
    after = requests.get(url, auth=AUTH, timeout=10).json()
    assert shape(running) == shape(recorded["running"])
    assert running["state"]["job"] == recorded["running"]["state"]["job"]
    assert shape(after) == shape(recorded["after_interrupt"])
    for key in ("interrupted", "job", "job_count", "job_no", "sampling_step"):
        assert after["state"][key] == recorded["after_interrupt"]["state"][key], key
