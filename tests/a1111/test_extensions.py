"""ControlNet and ADetailer on the real A1111 v1.10.1, through the worker's job path (docs/extensions.md).

Needs, besides ``A1111_DIR``, ``A1111_EXT_DIR`` (``scripts/setup_a1111_extensions.sh``) and ``A1111_EXT_MODELS``
(a full-size SD1.5 checkpoint in ``checkpoints/`` and ``scripts/a1111_extension_models.py``'s output); skipped
with the reason otherwise. One A1111 for the module, started through start.sh with both extensions in its data
dir and the models on the volume, so the folder layout start.sh gives the extensions is proven here too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.real_a1111 import Launched, launched
from tests.support.real_a1111_extensions import (
    CHECKPOINT,
    CONTROLNET,
    DETECTOR_ALWAYS,
    DETECTOR_NONE,
    NEEDS_EXTENSIONS,
    control_image,
    extension_dirs,
    extension_env,
    prepared,
)
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.settings import WorkerSettings

pytestmark = NEEDS_EXTENSIONS

JOB: dict[str, Any] = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "seed": 3}


def unit(**changes: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "canny", "model": CONTROLNET, "image": control_image(), **changes}


@pytest.fixture(scope="module")
def started(install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    dirs = extension_dirs()
    assert dirs is not None
    tmp = tmp_path_factory.mktemp("extensions")
    models, _data = prepared(tmp, *dirs)
    with launched(extension_env(install, dirs[0], tmp, models), tmp / "start.log", timeout_s=900) as running:
        yield running


@pytest.fixture(scope="module")
def runner(started: Launched) -> JobRunner:
    settings = WorkerSettings.model_validate({"a1111_url": started.url, "job_timeout_s": 900})
    return JobRunner(settings, A1111Client(started.url, request_timeout_s=120))


def run(runner: JobRunner, **job: Any) -> dict[str, Any]:
    out = runner.run({"id": "ext", "input": {**JOB, "checkpoint": CHECKPOINT, **job}})
    assert isinstance(out, dict)
    return out


def infotext(out: dict[str, Any]) -> str:
    return str(json.loads(out["info"])["infotexts"][0])


def test_the_extensions_list_what_start_sh_gave_them(started: Launched) -> None:
    models = requests.get(f"{started.url}/controlnet/model_list", timeout=60).json()["model_list"]
    assert [m.split(" [")[0] for m in models] == [CONTROLNET]
    detectors = requests.get(f"{started.url}/adetailer/v1/ad_model", timeout=60).json()["ad_model"]
    assert {DETECTOR_ALWAYS, DETECTOR_NONE, "mediapipe_face_full"} <= set(detectors)
    scripts = requests.get(f"{started.url}/sdapi/v1/scripts", timeout=60).json()
    assert {"controlnet", "adetailer"} <= set(scripts["txt2img"]) & set(scripts["img2img"])


def test_controlnet_canny_and_adetailer_through_the_worker(runner: JobRunner) -> None:
    out = run(
        runner,
        alwayson_scripts={
            "controlnet": {"args": [unit(), unit(module="invert", weight=0.5)]},
            "ADetailer": {"args": [True, False, {"ad_model": DETECTOR_ALWAYS, "ad_mask_k": 1}]},
        },
    )
    assert "error" not in out, out
    assert len(out["images"]) == 3  # the image, then ControlNet's two detected maps
    text = infotext(out)
    assert 'ControlNet 0: "Module: canny, Model: control_rand_sd15' in text, text
    assert 'ControlNet 1: "Module: invert, Model: control_rand_sd15' in text, text
    assert f"ADetailer model: {DETECTOR_ALWAYS}" in text, text


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown model", {"controlnet": {"args": [unit(model="control_nope_sd15")]}}, "model_not_found"),
    ("unknown preprocessor", {"controlnet": {"args": [unit(module="canny_nope")]}}, "input_invalid"),
    ("positional unit", {"controlnet": {"args": [[True, "canny", CONTROLNET]]}}, "input_invalid"),
    (
        "unknown detector",
        {"ADetailer": {"args": [True, False, {"ad_model": "face_nope.pt"}]}},
        "model_not_found",
    ),
    (
        "ADetailer field renamed",
        {"ADetailer": {"args": [True, False, {"ad_model": DETECTOR_ALWAYS, "ad_mask_k_largest": 1}]}},
        "input_invalid",
    ),
    ("script not installed", {"reactor": {"args": [True]}}, "input_invalid"),
]


@pytest.mark.parametrize(("case", "scripts", "code"), BAD, ids=[case for case, *_ in BAD])
def test_wrong_units_are_refused_before_generating(
    runner: JobRunner, started: Launched, case: str, scripts: dict[str, Any], code: str
) -> None:
    before = started.log().count("POST /sdapi/v1/txt2img")
    out = run(runner, alwayson_scripts=scripts)
    assert str(out.get("error", "")).startswith(f"{code}: "), out
    assert started.log().count("POST /sdapi/v1/txt2img") == before


def test_a_preprocessor_whose_weights_are_not_on_the_volume(runner: JobRunner, started: Launched) -> None:
    """Offline, ControlNet's ``depth`` (``depth_midas``) tries to download its MiDaS weights into the annotator
    folder start.sh gave it (empty here), fails, and A1111 answers 200 without the unit (measured,
    docs/extensions.md); the worker refuses the unit before generating instead."""
    depth = {"controlnet": {"args": [unit(module="depth")]}}
    out = run(runner, alwayson_scripts=depth)
    assert str(out.get("error", "")).startswith("model_not_found: "), out
    assert "midas/dpt_hybrid-midas-501f0c75.pt" in out["error"], out
    before = len(started.log())
    raw = requests.post(
        f"{started.url}/sdapi/v1/txt2img",
        json={**JOB, "alwayson_scripts": depth, "override_settings": {"sd_model_checkpoint": CHECKPOINT}},
        timeout=600,
    )
    assert raw.status_code == 200, raw.text[:2000]
    assert len(raw.json()["images"]) == 1  # no detected map: the unit was dropped
    assert 'ControlNet 0: "Module: depth, Model: control_rand_sd15' in infotext(raw.json())  # yet claimed
    log = started.log()[before:]
    assert "ControlNet-annotators/midas/dpt_hybrid-midas-501f0c75.pt" in log  # where it tried to download to
    assert "*** Error running process" in log and "URLError" in log, log[-3000:]
