"""The native ``controlnet``/``adetailer`` form on the real A1111 v1.10.1 with ControlNet v1.1.455 and ADetailer
v25.3.0, through the worker's job path (docs/api.md, "ControlNet and ADetailer").

Driven like ``tests/a1111/test_extensions.py`` (``A1111_EXT_DIR``, ``A1111_EXT_MODELS``: a full-size SD1.5, so
run it under ``flock /tmp/bigmem.lock``); skipped with the reason otherwise. The units are translated by the
worker and must be applied as the extensions report them; a wrong name or a bad control image is refused
before A1111 generates anything.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.a1111.test_extensions import infotext, run, runner, started
from tests.support.real_a1111 import Launched
from tests.support.real_a1111_extensions import CONTROLNET, DETECTOR_ALWAYS, control_image, extension_dirs
from worker.handler import JobRunner

__all__ = ["runner", "started"]  # the fixtures: one A1111 with both extensions for this module

pytestmark = pytest.mark.skipif(
    extension_dirs() is None,
    reason="needs A1111_EXT_DIR (scripts/setup_a1111_extensions.sh) and A1111_EXT_MODELS (docs/testing.md)",
)


def generations(started: Launched) -> int:
    log = started.log()
    return log.count("POST /sdapi/v1/txt2img") + log.count("POST /sdapi/v1/img2img")


def test_two_controlnet_units_and_adetailer_in_the_native_form(runner: JobRunner) -> None:
    out = run(
        runner,
        controlnet=[
            {"module": "canny", "model": CONTROLNET, "image": control_image(), "threshold_a": 100},
            {
                "module": "invert",
                "model": CONTROLNET,
                "image": control_image(),
                "weight": 0.5,
                "control_mode": 1,
            },
        ],
        adetailer=[{"model": DETECTOR_ALWAYS, "mask_k": 1, "steps": 2}],
    )
    assert "error" not in out, out
    assert len(out["images"]) == 3  # the image, then ControlNet's two detected maps
    text = infotext(out)
    assert 'ControlNet 0: "Module: canny, Model: control_rand_sd15' in text, text
    assert 'ControlNet 1: "Module: invert, Model: control_rand_sd15, Weight: 0.5' in text, text
    assert "Control Mode: My prompt is more important" in text, text
    assert f"ADetailer model: {DETECTOR_ALWAYS}" in text, text
    assert "ADetailer model 2nd" not in text  # the slots the job did not fill stay empty
    assert "ADetailer steps: 2" in text, text  # "steps" turned ADetailer's own steps on
    echoed = out["parameters"]["alwayson_scripts"]["controlnet"]["args"][0]["image"]
    assert echoed.startswith("<png image: ") and control_image() not in json.dumps(out["parameters"])


def test_img2img_with_one_controlnet_unit_on_the_init_image(runner: JobRunner) -> None:
    out = run(
        runner,
        init_images=[control_image()],
        denoising_strength=0.5,
        controlnet=[{"module": "canny", "model": CONTROLNET, "control_mode": "controlnet"}],
    )
    assert "error" not in out, out
    assert len(out["images"]) == 2  # the image and the detected map
    assert 'ControlNet 0: "Module: canny, Model: control_rand_sd15' in infotext(out)
    assert "Control Mode: ControlNet is more important" in infotext(out)


TRUNCATED = base64.b64encode(base64.b64decode(control_image())[:-40]).decode()
BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "unknown preprocessor",
        {
            "controlnet": [
                {"module": "canny", "model": CONTROLNET, "image": control_image()},
                {"module": "canny_nope", "model": CONTROLNET, "image": control_image()},
            ]
        },
        "input_invalid: controlnet[1].module: ControlNet preprocessor 'canny_nope' not found",
    ),
    (
        "unknown ControlNet model",
        {"controlnet": [{"module": "canny", "model": "control_nope_sd15", "image": control_image()}]},
        "model_not_found: controlnet[0].model: ControlNet model 'control_nope_sd15' not found",
    ),
    (
        "unknown detector",
        {"adetailer": [{"model": "face_nope.pt"}]},
        "model_not_found: adetailer[0].model: ADetailer model 'face_nope.pt' not found",
    ),
    (
        "txt2img unit without an image",
        {"controlnet": [{"module": "canny", "model": CONTROLNET}]},
        "input_invalid: controlnet[0].image: a txt2img ControlNet unit needs a control image",
    ),
    (
        "truncated control image",
        {"controlnet": [{"module": "canny", "model": CONTROLNET, "image": TRUNCATED}]},
        "input_invalid: controlnet[0].image: a truncated or corrupt PNG",
    ),
    (
        "truncated mask in the raw form",
        {
            "alwayson_scripts": {
                "controlnet": {
                    "args": [
                        {
                            "enabled": True,
                            "module": "canny",
                            "model": CONTROLNET,
                            "image": {"image": control_image(), "mask": TRUNCATED},
                        }
                    ]
                }
            }
        },
        "input_invalid: alwayson_scripts.controlnet.args[0].image.mask: a truncated or corrupt PNG",
    ),
]


@pytest.mark.parametrize(("case", "job", "message"), BAD, ids=[case for case, *_ in BAD])
def test_wrong_native_units_are_refused_before_generating(
    runner: JobRunner, started: Launched, case: str, job: dict[str, Any], message: str
) -> None:
    before = generations(started)
    out = run(runner, **job)
    assert str(out.get("error", "")).startswith(message), out
    assert generations(started) == before
