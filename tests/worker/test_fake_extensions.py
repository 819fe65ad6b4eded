"""The fake A1111's ControlNet and ADetailer against what the real ones answered
(tests/fixtures/a1111/extensions.json): the listings it serves, and for each recorded request whose units the
extensions applied, the same status, number of images and extension infotext entries. (Requests the real
extensions silently ignored are refused by the worker's pre-flight and not emulated.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.fake_a1111 import FakeA1111

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "a1111" / "extensions.json").read_text())
LISTINGS: dict[str, Any] = RECORDED["listings"]
EXCHANGES = {e["name"]: e for e in RECORDED["exchanges"]}
#: requests whose units the real extensions applied, and plain refusals
EMULATED = (
    "cn_two_units_canny_invert",
    "cn_canny_model_with_hash",
    "cn_disabled_unit",
    "cn_unknown_field",
    "cn_script_name_capitalised",
    "ad_detection",
    "ad_no_detection",
    "ad_dict_first",
    "ad_mediapipe",
    "ad_model_none",
    "ad_disabled",
    "unknown_script",
    "plain",
)


def serving_the_extensions(fake: FakeA1111) -> FakeA1111:
    fake.data.scripts = LISTINGS["/sdapi/v1/scripts"]
    fake.data.extension_routes = {
        path: body for path, body in LISTINGS.items() if not path.startswith("/sdapi/")
    }
    return fake


def extension_entries(params: dict[str, Any]) -> dict[str, str]:
    """The extensions' infotext entries, ControlNet's cut to ``Module: ..., Model: ...``."""
    entries = {}
    for key, value in params.items():
        if key.startswith("ControlNet "):
            entries[key] = ", ".join(str(value).split(", ")[:2])
        elif key in ("ADetailer model", "ADetailer model 2nd", "ADetailer version"):
            entries[key] = str(value)
    return entries


def with_image(value: Any) -> Any:
    if value == "$CONTROL_IMAGE":
        return RECORDED["meta"]["control_image"]
    if value == "$CONTROLNET_TITLE":
        return RECORDED["controlnet_title"]
    if isinstance(value, list):
        return [with_image(item) for item in value]
    if isinstance(value, dict):
        return {key: with_image(item) for key, item in value.items()}
    return value


def test_the_listings_are_served_as_recorded(fake_a1111: FakeA1111) -> None:
    serving_the_extensions(fake_a1111)
    for path, body in LISTINGS.items():
        if path.startswith("/sdapi/v1/script-info"):
            continue  # not part of the fake
        got = requests.get(fake_a1111.url + path, timeout=10)
        assert (got.status_code, got.json()) == (200, body), path


@pytest.mark.parametrize("name", EMULATED)
def test_the_fake_answers_as_the_extensions_did(fake_a1111: FakeA1111, name: str) -> None:
    if name not in EXCHANGES:
        pytest.skip(f"{name} is not in the recording")
    exchange = EXCHANGES[name]
    serving_the_extensions(fake_a1111)
    got = requests.post(
        f"{fake_a1111.url}/sdapi/v1/{exchange['endpoint']}", json=with_image(exchange["body"]), timeout=30
    )
    assert got.status_code == exchange["status"]
    recorded = exchange["response"]
    if got.status_code != 200:
        assert got.json()["detail"] == recorded["detail"]
        return
    answer = got.json()
    assert len(answer["images"]) == len(recorded["images"])
    params = json.loads(answer["info"])["extra_generation_params"]
    assert extension_entries(params) == extension_entries(recorded["info"]["extra_generation_params"])
