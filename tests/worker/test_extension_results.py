"""The post-check of the extensions' units on every answer the real A1111 gave with ControlNet or ADetailer
(tests/fixtures/a1111/extensions.json): a unit the extension dropped is named, one it applied is not, and
ControlNet's detected maps are not taken for generated images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.extension_results import check_extensions, control_maps

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "a1111" / "extensions.json").read_text())
ANSWERS = {e["name"]: e for e in RECORDED["exchanges"] if e["status"] == 200}

#: case -> the problem the post-check must report (None: the units were applied)
EXPECTED: dict[str, str | None] = {
    "cn_two_units_canny_invert": None,
    "cn_unknown_model": "ControlNet returned no detected maps (expected 1)",
    "ad_unknown_field": "ADetailer unit 1 (face_always.pt) was not applied",
    "ad_detection": None,
    "ad_no_detection": None,
    "ad_dict_first": None,
    "cn_model_none": "ControlNet returned no detected maps (expected 1)",
    "cn_no_image": "ControlNet returned no detected maps (expected 1)",
    "cn_canny_model_with_hash": None,
    "cn_unknown_field": None,
}
#: what the answer cannot show: ADetailer reports a detector it failed to load like one it ran, and a
#: positional ControlNet unit is no unit at all; pre-flight is the only guard against both
INVISIBLE_AFTERWARDS = ("ad_unknown_model", "cn_positional_list")


def recorded(name: str) -> dict[str, Any]:
    if name not in ANSWERS:
        pytest.skip(f"{name} is not in the recording")
    return ANSWERS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_post_check_on_the_recorded_answers(name: str) -> None:
    exchange = recorded(name)
    body, answer = exchange["body"], exchange["response"]
    generated, problems = check_extensions(body, answer["images"], answer["info"])
    expected = EXPECTED[name]
    if expected is None:
        assert problems == []
        assert len(generated) == len(answer["images"]) - control_maps(body) == 1
    else:
        assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("name", INVISIBLE_AFTERWARDS)
def test_what_only_pre_flight_can_catch(name: str) -> None:
    exchange = recorded(name)
    answer = exchange["response"]
    assert check_extensions(exchange["body"], answer["images"], answer["info"])[1] == []


def test_the_infotext_names_a_controlnet_model_that_was_never_loaded() -> None:
    """Why the maps count: ControlNet writes its entry before it loads the model (recorded)."""
    answer = recorded("cn_unknown_model")["response"]
    assert answer["info"]["extra_generation_params"]["ControlNet 0"].startswith(
        "Module: canny, Model: control_nope_sd15"
    )
    assert len(answer["images"]) == 1


def test_no_maps_expected_when_the_units_do_not_save_them() -> None:
    body = {"alwayson_scripts": {"controlnet": {"args": [{"module": "canny", "save_detected_map": False}]}}}
    info = {"extra_generation_params": {"ControlNet 0": "Module: canny, Model: x"}}
    assert check_extensions(body, ["image"], info) == (["image"], [])
