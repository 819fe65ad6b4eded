"""The native ``controlnet``/``adetailer`` form: its schema's refusals and its translation to the extensions'
``alwayson_scripts`` entries, table-driven, and the fixtures docs/api.md shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import FIXTURES, load_json
from worker.errors import InputInvalid
from worker.extension_units import ADetailerUnit, ControlNetUnit
from worker.image_jobs import parse_any_job
from worker.schema import GenerationRequest
from worker.translate_extensions import (
    adetailer_args,
    adetailer_unit,
    controlnet_unit,
    native_location,
)

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EXTENSION_FIXTURES = FIXTURES / "jobs" / "extensions"


def parse(raw: dict[str, Any]) -> GenerationRequest:
    request = parse_any_job(raw, max_images=8)
    assert isinstance(request, GenerationRequest)
    return request


# --- ControlNet ---------------------------------------------------------------------------------

CONTROLNET: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "the least: enabled, module and model always sent",
        {"model": "control_v11p_sd15_canny"},
        {"enabled": True, "module": "none", "model": "control_v11p_sd15_canny"},
    ),
    (
        "disabled stays in its slot, disabled",
        {"model": "m", "module": "canny", "enabled": False},
        {"enabled": False, "module": "canny", "model": "m"},
    ),
    (
        "enums by short name",
        {"model": "m", "control_mode": "controlnet", "resize_mode": "fill", "hr_option": "low_res_only"},
        {
            "enabled": True,
            "module": "none",
            "model": "m",
            "resize_mode": "Resize and Fill",
            "control_mode": "ControlNet is more important",
            "hr_option": "Low res only",
        },
    ),
    (
        "enums by position, and the extension's own strings and aliases",
        {"model": "m", "control_mode": 1, "resize_mode": "Inner Fit (Scale to Fit)"},
        {
            "enabled": True,
            "module": "none",
            "model": "m",
            "resize_mode": "Crop and Resize",
            "control_mode": "My prompt is more important",
        },
    ),
    (
        "every number as given",
        {
            "model": "m",
            "module": "canny",
            "image": "IMG",
            "mask": "MASK",
            "weight": 0.5,
            "processor_res": 512,
            "threshold_a": 100,
            "threshold_b": 200,
            "guidance_start": 0.1,
            "guidance_end": 0.9,
            "pixel_perfect": True,
            "save_detected_map": False,
        },
        {
            "enabled": True,
            "module": "canny",
            "model": "m",
            "image": "IMG",
            "mask": "MASK",
            "weight": 0.5,
            "processor_res": 512,
            "threshold_a": 100.0,
            "threshold_b": 200.0,
            "guidance_start": 0.1,
            "guidance_end": 0.9,
            "pixel_perfect": True,
            "save_detected_map": False,
        },
    ),
]


@pytest.mark.parametrize(("case", "native", "expected"), CONTROLNET, ids=[c for c, *_ in CONTROLNET])
def test_controlnet_translation(case: str, native: dict[str, Any], expected: dict[str, Any]) -> None:
    assert controlnet_unit(ControlNetUnit.model_validate(native)) == expected


# --- ADetailer ----------------------------------------------------------------------------------

ADETAILER: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("the least", {"model": "face_yolov8n.pt"}, {"ad_model": "face_yolov8n.pt"}),
    (
        "plain fields gain ad_",
        {"model": "face_yolov8n.pt", "prompt": "a face", "confidence": 0.5, "mask_k": 1, "mask_blur": 8},
        {
            "ad_model": "face_yolov8n.pt",
            "ad_prompt": "a face",
            "ad_confidence": 0.5,
            "ad_mask_k": 1,
            "ad_mask_blur": 8,
        },
    ),
    (
        "a value given turns its UI switch on",
        {"model": "m", "steps": 12, "cfg_scale": 5, "clip_skip": 2, "noise_multiplier": 1.1},
        {
            "ad_model": "m",
            "ad_steps": 12,
            "ad_use_steps": True,
            "ad_cfg_scale": 5.0,
            "ad_use_cfg_scale": True,
            "ad_clip_skip": 2,
            "ad_use_clip_skip": True,
            "ad_noise_multiplier": 1.1,
            "ad_use_noise_multiplier": True,
        },
    ),
    (
        "a scheduler alone keeps the job's sampler",
        {"model": "m", "scheduler": "Karras"},
        {"ad_model": "m", "ad_scheduler": "Karras", "ad_use_sampler": True, "ad_sampler": "Use same sampler"},
    ),
    (
        "a sampler given is the sampler used",
        {"model": "m", "sampler": "Euler a"},
        {"ad_model": "m", "ad_sampler": "Euler a", "ad_use_sampler": True},
    ),
    (
        "the inpaint size, both at once",
        {"model": "m", "inpaint_width": 768, "inpaint_height": 640},
        {
            "ad_model": "m",
            "ad_inpaint_width": 768,
            "ad_inpaint_height": 640,
            "ad_use_inpaint_width_height": True,
        },
    ),
    (
        "a separate checkpoint and VAE",
        {"model": "m", "checkpoint": "inpaint_v2", "vae": "vae-ft-mse"},
        {
            "ad_model": "m",
            "ad_checkpoint": "inpaint_v2",
            "ad_use_checkpoint": True,
            "ad_vae": "vae-ft-mse",
            "ad_use_vae": True,
        },
    ),
]


@pytest.mark.parametrize(("case", "native", "expected"), ADETAILER, ids=[c for c, *_ in ADETAILER])
def test_adetailer_translation(case: str, native: dict[str, Any], expected: dict[str, Any]) -> None:
    assert adetailer_unit(ADetailerUnit.model_validate(native)) == expected


def test_adetailer_args_fill_the_unused_slots() -> None:
    """A slot the request leaves out keeps its UI default, which can be a detector: each is filled."""
    units = [ADetailerUnit(model="face_yolov8n.pt"), ADetailerUnit(model="hand_yolov8n.pt")]
    assert adetailer_args(units) == [
        True,
        False,
        {"ad_model": "face_yolov8n.pt"},
        {"ad_model": "hand_yolov8n.pt"},
        {"ad_model": "None"},
        {"ad_model": "None"},
    ]
    many = [ADetailerUnit(model=f"m{i}.pt") for i in range(5)]
    assert [slot["ad_model"] for slot in adetailer_args(many)[2:]] == [f"m{i}.pt" for i in range(5)]


# --- the job: one form per extension, translated when parsed -----------------------------------


def test_native_units_become_alwayson_scripts_beside_other_scripts() -> None:
    job = parse(
        {
            "prompt": "a portrait",
            "controlnet": [{"model": "m", "module": "canny", "image": "IMG"}],
            "adetailer": [{"model": "face_yolov8n.pt"}],
            "alwayson_scripts": {"reactor": {"args": [True]}},
        }
    ).job
    assert job.alwayson_scripts == {
        "reactor": {"args": [True]},
        "controlnet": {"args": [{"enabled": True, "module": "canny", "model": "m", "image": "IMG"}]},
        "ADetailer": {"args": [True, False, {"ad_model": "face_yolov8n.pt"}, *[{"ad_model": "None"}] * 3]},
    }
    assert "alwayson_scripts" in job.model_fields_set  # so the translation sends it


#: (case, job fields, fragments of the input_invalid message)
REFUSED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (
        "control_mode not one of the extension's",
        {"controlnet": [{"model": "m", "control_mode": "Loud"}]},
        ("input.controlnet.0.control_mode='Loud'", "'Balanced' (0)", "'ControlNet is more important' (2"),
    ),
    (
        "resize_mode out of range",
        {"controlnet": [{"model": "m", "resize_mode": 3}]},
        ("input.controlnet.0.resize_mode=3", "'Just Resize' (0, 'resize')", "'Resize and Fill' (2"),
    ),
    (
        "weight above the extension's bound",
        {"controlnet": [{"model": "m"}, {"model": "m", "weight": 2.5}]},
        ("input.controlnet.1.weight=2.5", "less than or equal to 2"),
    ),
    (
        "guidance out of order",
        {"controlnet": [{"model": "m", "guidance_start": 0.8, "guidance_end": 0.2}]},
        ("input.controlnet.0", "guidance_start (0.8) is after guidance_end (0.2)"),
    ),
    ("no model", {"controlnet": [{"module": "canny"}]}, ("input.controlnet.0.model is required",)),
    (
        "a field the unit does not have",
        {"controlnet": [{"model": "m", "guidance": 0.5}]},
        ("unknown field input.controlnet.0.guidance", "did you mean guidance_end or guidance_start"),
    ),
    ("true as a number", {"controlnet": [{"model": "m", "weight": True}]}, ("must be a number",)),
    ("an empty list", {"controlnet": []}, ("input.controlnet=[]", "at least 1 item")),
    (
        "ADetailer's own field names",
        {"adetailer": [{"ad_model": "face_yolov8n.pt"}]},
        ("unknown field input.adetailer.0.ad_model; did you mean model",),
    ),
    (
        "the field ADetailer renamed",
        {"adetailer": [{"model": "m", "mask_k_largest": 1}]},
        ("unknown field input.adetailer.0.mask_k_largest", "mask_k"),
    ),
    (
        "confidence above 1",
        {"adetailer": [{"model": "m", "confidence": 30}]},
        ("input.adetailer.0.confidence=30", "less than or equal to 1"),
    ),
    (
        "mask filter not one of ADetailer's",
        {"adetailer": [{"model": "m", "mask_filter_method": "Largest"}]},
        ("input.adetailer.0.mask_filter_method='Largest'", "'Area' or 'Confidence'"),
    ),
    (
        "half an inpaint size",
        {"adetailer": [{"model": "m", "inpaint_width": 768}]},
        ("give inpaint_width and inpaint_height together",),
    ),
    (
        "native ControlNet and a raw entry",
        {"controlnet": [{"model": "m"}], "alwayson_scripts": {"ControlNet": {"args": []}}},
        ("controlnet and alwayson_scripts.ControlNet both give", "send one of them"),
    ),
    (
        "native ADetailer and a raw entry",
        {"adetailer": [{"model": "m"}], "alwayson_scripts": {"adetailer": {"args": [True]}}},
        ("adetailer and alwayson_scripts.adetailer both give",),
    ),
]


@pytest.mark.parametrize(("case", "fields", "fragments"), REFUSED, ids=[c for c, *_ in REFUSED])
def test_refused_naming_the_unit_the_field_and_the_choices(
    case: str, fields: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    with pytest.raises(InputInvalid) as caught:
        parse({"prompt": "a portrait", **fields})
    for fragment in fragments:
        assert fragment in caught.value.message, (fragment, caught.value.message)


LOCATIONS = [
    ("alwayson_scripts.controlnet.args[1].model", True, "controlnet[1].model"),
    ("alwayson_scripts.controlnet.args[0].image.mask", True, "controlnet[0].image.mask"),
    ("alwayson_scripts.controlnet.args[0].image[1]", True, "controlnet[0].image[1]"),
    ("alwayson_scripts.controlnet", True, "controlnet"),
    ("alwayson_scripts.ADetailer.args[2].ad_model", True, "adetailer[0].model"),
    ("alwayson_scripts.ADetailer.args[3]", True, "adetailer[1]"),
    ("alwayson_scripts.controlnet.args[1].model", False, "alwayson_scripts.controlnet.args[1].model"),
    ("alwayson_scripts.ADetailer.args[2].ad_model", False, "alwayson_scripts.ADetailer.args[2].ad_model"),
    ("alwayson_scripts.reactor", True, "alwayson_scripts.reactor"),
]


@pytest.mark.parametrize(("where", "native", "expected"), LOCATIONS)
def test_locations_are_named_as_the_caller_wrote_them(where: str, native: bool, expected: str) -> None:
    assert native_location(where, controlnet=native, adetailer=native) == expected


# --- the fixtures docs/api.md shows -------------------------------------------------------------


def test_every_extension_fixture_is_in_the_docs() -> None:
    documented = set(re.findall(r"<!-- fixture: (jobs/extensions/[\w.-]+) -->", API_DOC.read_text("utf-8")))
    assert {f"jobs/extensions/{p.name}" for p in EXTENSION_FIXTURES.glob("*.json")} <= documented


@pytest.mark.parametrize(
    ("name", "form"), [("txt2img_controlnet_adetailer", "native"), ("img2img_controlnet", "native")]
)
def test_the_good_fixtures_parse_as_native_jobs(name: str, form: str) -> None:
    request = parse(load_json(f"jobs/extensions/{name}.json")["input"])
    assert request.form == form
    assert request.job.alwayson_scripts and "controlnet" in request.job.alwayson_scripts
