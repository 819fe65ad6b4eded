"""The network-volume worker's ControlNet and ADetailer example payloads on the real A1111 v1.10.1 with both
extensions, through every job form the worker accepts (tests/support/extension_payloads.py).

The peer's payloads name models we do not have; the volume holds the random-weight ones under those names, as
a user with those files would have them: ``deliberate_v2.safetensors`` (the full-size random SD1.5),
``vae-ft-mse-840000-ema-pruned.safetensors`` (its VAE), ``control_v11p_sd15_canny.safetensors`` (the random
ControlNet) and ``face_yolov8n.pt`` (the random detector that finds nothing). Full-size SD1.5: run under the
big-memory lock (docs/testing.md). Needs what tests/a1111/test_extensions.py needs; skipped otherwise.

With ``A1111_RECORD_EXTENSION_PAYLOADS=PATH`` the outcomes and the listings are written to PATH
(``tests/fixtures/a1111/extension_payloads.json``): tests/worker/test_fake_extension_payloads.py holds the fake
to them in CI.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.extension_payloads import (
    Case,
    edge_image,
    peer_volume,
    registry_runner,
    run_case,
    sd15_cases,
)
from tests.support.real_a1111 import Launched, launched
from tests.support.real_a1111_extensions import NEEDS_EXTENSIONS, extension_dirs, extension_env
from worker.handler import JobRunner

pytestmark = NEEDS_EXTENSIONS

IMAGE = edge_image()
CASES = sd15_cases(IMAGE)
FORMS = ("envelope", "a1111", "native")
#: the file each peer name stands for: (kind folder, name on the volume, source under A1111_EXT_MODELS)
PEER_NAMES = (
    ("checkpoints", "deliberate_v2.safetensors", "checkpoints/rand_sd15.safetensors"),
    ("ControlNet", "control_v11p_sd15_canny.safetensors", "ControlNet/control_rand_sd15.safetensors"),
    ("adetailer", "face_yolov8n.pt", "adetailer/face_rand.pt"),
)
VAE = "vae-ft-mse-840000-ema-pruned.safetensors"
PEER_CONTROLNET = PEER_NAMES[1][1]
LISTINGS = ("/sdapi/v1/sd-models", "/sdapi/v1/sd-vae", "/controlnet/model_list", "/adetailer/v1/ad_model")


@pytest.fixture(scope="module")
def recording() -> Iterator[dict[str, Any]]:
    recorded: dict[str, Any] = {"outcomes": {}, "listings": {}}
    yield recorded
    target = os.environ.get("A1111_RECORD_EXTENSION_PAYLOADS", "").strip()
    if target and recorded["outcomes"]:
        recorded["meta"] = {
            "recorded_with": "A1111 v1.10.1, sd-webui-controlnet 56cec5b2, adetailer v25.3.0; start.sh, CPU",
            "test": "tests/a1111/test_extension_payloads.py",
        }
        Path(target).write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def started(
    install: Path, tmp_path_factory: pytest.TempPathFactory, recording: dict[str, Any]
) -> Iterator[Launched]:
    dirs = extension_dirs()
    assert dirs is not None
    tmp = tmp_path_factory.mktemp("payloads")
    ext_dir, source = dirs
    files = [(kind, name, source / from_source) for kind, name, from_source in PEER_NAMES]
    models = peer_volume(tmp, ext_dir, files, (source / PEER_NAMES[0][2], VAE))
    with launched(extension_env(install, dirs[0], tmp, models), tmp / "start.log", timeout_s=900) as running:
        for path in LISTINGS:
            recording["listings"][path] = scrubbed(
                requests.get(running.url + path, timeout=60).json(), models
            )
        yield running


def scrubbed(value: Any, models: Path) -> Any:
    """Listings without this run's folders (A1111 lists absolute paths)."""
    return json.loads(json.dumps(value).replace(str(models), "$MODELS_DIR"))


@pytest.fixture(scope="module")
def runner(started: Launched) -> JobRunner:
    return registry_runner(started)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_peer_payload_in_every_form(
    runner: JobRunner, started: Launched, recording: dict[str, Any], case: Case, form: str
) -> None:
    recording["outcomes"][f"{case.name}/{form}"] = run_case(runner, started, case, form)


def native_job(scripts: dict[str, Any]) -> dict[str, Any]:
    job = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "seed": 5}
    return {"input": {**job, "checkpoint": "deliberate_v2", "alwayson_scripts": scripts}}


def test_a_controlnet_copied_onto_the_volume_after_start_is_used_at_once(
    runner: JobRunner, started: Launched
) -> None:
    models = Path(started.env["WORKER_MODELS_DIR"])
    shutil.copyfile(
        models / "ControlNet" / PEER_CONTROLNET, models / "ControlNet" / "control_late_sd15.safetensors"
    )
    unit = {
        "enabled": True,
        "module": "canny",
        "model": "control_late_sd15",
        "image": IMAGE,
        "processor_res": 64,
    }
    out = runner.run({"id": "late-cn", **native_job({"controlnet": {"args": [unit]}})})
    assert "error" not in out, out
    assert 'ControlNet 0: "Module: canny, Model: control_late_sd15' in json.loads(out["info"])["infotexts"][0]


def test_a_detector_copied_onto_the_volume_after_start_is_refused_until_a_restart(
    runner: JobRunner, started: Launched
) -> None:
    models = Path(started.env["WORKER_MODELS_DIR"])
    shutil.copyfile(models / "adetailer" / "face_yolov8n.pt", models / "adetailer" / "face_late.pt")
    listed = requests.get(f"{started.url}/adetailer/v1/ad_model", timeout=60).json()["ad_model"]
    assert (
        "face_late.pt" not in listed and "face_yolov8n.pt" in listed
    )  # ADetailer listed its folder at start
    out = runner.run(
        {"id": "late-ad", **native_job({"ADetailer": {"args": [True, False, {"ad_model": "face_late.pt"}]}})}
    )
    assert str(out.get("error", "")).startswith("model_not_found: "), out
    assert "only when A1111 starts" in out["error"], out
