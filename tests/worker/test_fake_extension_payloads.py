"""The peer's ControlNet and ADetailer example payloads, in every job form, through the worker against the fake
A1111, held to what the real A1111 with both extensions answered (tests/fixtures/a1111/extension_payloads.json,
written by tests/a1111/test_extension_payloads.py): the fake lists what the real one listed (the random models
under the peer's names; the extensions' other routes from tests/fixtures/a1111/extensions.json), and every case
in every form gives the same outcome: the same refusal word for word, or the same number of images and the same
extension entries in the infotext."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.extension_payloads import check, edge_image, outcome, sd15_cases
from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.settings import WorkerSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "a1111"
EXTENSIONS = json.loads((FIXTURES / "extensions.json").read_text())["listings"]
RECORDED: dict[str, Any] = json.loads((FIXTURES / "extension_payloads.json").read_text())
CASES = {case.name: case for case in sd15_cases(edge_image())}
FORMS = ("envelope", "a1111", "native")


def as_recorded(fake: FakeA1111) -> FakeA1111:
    listings = RECORDED["listings"]
    fake.data.scripts = EXTENSIONS["/sdapi/v1/scripts"]
    routes = {path: body for path, body in EXTENSIONS.items() if not path.startswith("/sdapi/")}
    routes.update({path: listings[path] for path in ("/controlnet/model_list", "/adetailer/v1/ad_model")})
    fake.data.extension_routes = routes
    fake.data.checkpoints = listings["/sdapi/v1/sd-models"]
    fake.data.vaes = listings["/sdapi/v1/sd-vae"]
    fake.data.options["sd_model_checkpoint"] = fake.data.checkpoints[0]["title"]
    return fake


def test_every_case_and_form_was_recorded() -> None:
    assert set(RECORDED["outcomes"]) == {f"{name}/{form}" for name in CASES for form in FORMS}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_form_answers_as_on_the_real_a1111(fake_a1111: FakeA1111, name: str, form: str) -> None:
    fake = as_recorded(fake_a1111)
    settings = WorkerSettings.model_validate({"a1111_url": fake.url, "job_timeout_s": 10})
    runner = JobRunner(settings, A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5))
    generated = len(fake.requests_to("txt2img")) + len(fake.requests_to("img2img"))
    out = runner.run({"id": f"{name}-{form}", **CASES[name].forms[form]})
    assert isinstance(out, dict)
    got = outcome(out)
    check(CASES[name], got)
    assert got == RECORDED["outcomes"][f"{name}/{form}"]
    if CASES[name].expect != "ok":  # refused before anything was generated
        assert len(fake.requests_to("txt2img")) + len(fake.requests_to("img2img")) == generated
