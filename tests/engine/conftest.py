"""Shared helpers for the embedded-engine tests: an HTTP client and small request builders.

(Every test here is marked ``engine`` by ``tests/conftest.py``; a ``pytestmark`` in a conftest would not mark them.)
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.embedded_engine import EmbeddedEngine

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a"}


@pytest.fixture(scope="session")
def client(embedded_engine: EmbeddedEngine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embedded_engine.url + "/sdapi/v1", timeout=120) as c:
        yield c


def txt2img(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    """POST a small txt2img, assert 200 and return the body with ``info`` decoded."""
    response = client.post("/txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    body["info"] = json.loads(body["info"])
    return body


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image
