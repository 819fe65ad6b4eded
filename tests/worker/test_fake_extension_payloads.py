"""The peer's ControlNet and ADetailer example payloads, in every job form, through the worker against the fake
A1111 serving the real extensions' listings (tests/fixtures/a1111/extensions.json) with the peer's model names,
held to what tests/a1111/test_extension_payloads.py asserts on the real A1111: each payload as published refused
naming its fault, each runnable one generating with its units in the infotext."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.extension_payloads import check, edge_image, outcome, sd15_cases
from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.settings import WorkerSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "a1111"
EXTENSIONS = json.loads((FIXTURES / "extensions.json").read_text())["listings"]
CASES = {case.name: case for case in sd15_cases(edge_image())}
CHECKPOINT_SHA256 = "7bf474193462d3858acd7348f51cfb5482ddbd4d009fcea70575cb02349e60e4"  # rand_sd15's


def with_peer_names(fake: FakeA1111) -> FakeA1111:
    """The fake listing the random models under the peer's names, as the real one did in the a1111 suite."""
    fake.data.scripts = EXTENSIONS["/sdapi/v1/scripts"]
    routes = {path: body for path, body in EXTENSIONS.items() if not path.startswith("/sdapi/")}
    routes["/controlnet/model_list"] = {"model_list": ["control_v11p_sd15_canny [d7f078f1]"]}
    detectors = EXTENSIONS["/adetailer/v1/ad_model"]["ad_model"]
    routes["/adetailer/v1/ad_model"] = {"ad_model": [*detectors[:4], "face_yolov8n.pt"]}
    fake.data.extension_routes = routes
    fake.data.checkpoints += [
        {
            "title": f"deliberate_v2.safetensors [{CHECKPOINT_SHA256[:10]}]",
            "model_name": "deliberate_v2",
            "hash": CHECKPOINT_SHA256[:10],
            "sha256": CHECKPOINT_SHA256,
            "filename": "$MODELS_DIR/checkpoints/deliberate_v2.safetensors",
            "config": None,
        }
    ]
    return fake


@pytest.mark.parametrize("form", ("envelope", "a1111", "native"))
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_peer_payload_in_each_form(fake_a1111: FakeA1111, name: str, form: str) -> None:
    fake = with_peer_names(fake_a1111)
    settings = WorkerSettings.model_validate({"a1111_url": fake.url, "job_timeout_s": 10})
    runner = JobRunner(settings, A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5))
    generated = len(fake.requests_to("txt2img")) + len(fake.requests_to("img2img"))
    out = runner.run({"id": f"{name}-{form}", **CASES[name].forms[form]})
    assert isinstance(out, dict)
    check(CASES[name], outcome(out))
    if CASES[name].expect != "ok":  # refused before anything was generated
        assert len(fake.requests_to("txt2img")) + len(fake.requests_to("img2img")) == generated
