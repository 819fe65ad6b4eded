"""Inputs that once made the embedded engine answer 500 are refused with a 4xx naming the valid range."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.engine.conftest import SMALL
from tests.support.embedded_engine import EmbeddedEngine


def post(client: httpx.Client, **fields: Any) -> httpx.Response:
    # Python's JSON writer can send NaN (as some clients do); httpx's json= would refuse it
    body = json.dumps({**SMALL, **fields})
    return client.post("/txt2img", content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": float("nan")},
        {"cfg_scale": float("inf")},
        {"hr_scale": float("nan"), "enable_hr": True, "denoising_strength": 0.5},
        {"s_noise": float("-inf")},
    ],
)
def test_non_finite_numbers_are_a_json_422(client: httpx.Client, fields: dict[str, Any]) -> None:
    response = post(client, **fields)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", next(iter(fields))] and "finite" in problem["msg"]


def test_a_huge_invalid_value_is_not_echoed_whole(client: httpx.Client) -> None:
    response = post(client, steps="9" * 100_000)
    assert response.status_code == 422 and len(response.content) < 2_000


@pytest.mark.parametrize(("field", "value"), [("seed", 2**64), ("seed", -(2**63) - 1), ("subseed", 2**64)])
def test_seeds_beyond_64_bits_are_400(client: httpx.Client, field: str, value: int) -> None:
    response = post(client, **{field: value})
    assert response.status_code == 400, response.text
    assert f"{field} must be -1 (random) or" in response.json()["detail"]


HIRES = {"enable_hr": True, "denoising_strength": 0.5, "hr_upscaler": "Latent"}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"seed_resize_from_w": 1_000_000_000, "seed_resize_from_h": 1_000_000_000}, "seed_resize_from_w"),
        ({"seed_resize_from_h": 4104}, "seed_resize_from_h"),
        ({"width": 4104}, "width"),
        ({"height": 12}, "height"),
        ({"steps": 1001}, "steps"),
        ({"batch_size": 65}, "batch_size*n_iter"),
        ({"batch_size": 8, "n_iter": 9}, "batch_size*n_iter"),
        ({**HIRES, "hr_scale": 1e300}, "hr_scale"),
        ({**HIRES, "hr_resize_x": 10**12}, "hires size"),
        ({**HIRES, "hr_second_pass_steps": 1001}, "hr_second_pass_steps"),
    ],
)
def test_every_size_that_reaches_an_allocation_is_bounded(
    client: httpx.Client, fields: dict[str, Any], named: str
) -> None:
    """Issue 17: seed_resize_from_w/h of 1e9 answered 500 (torch could not allocate 2.5e17 bytes)."""
    response = post(client, **fields)
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


def test_a_seed_resize_in_range_or_off_still_generates(client: httpx.Client) -> None:
    assert post(client, seed_resize_from_w=64, seed_resize_from_h=64).status_code == 200
    assert post(client, seed_resize_from_w=-1, seed_resize_from_h=0).status_code == 200


def test_the_largest_seed_of_a_batch_still_fits(client: httpx.Client) -> None:
    assert post(client, seed=2**64 - 2, batch_size=2).status_code == 200
    assert post(client, seed=2**64 - 1, batch_size=2).status_code == 400


def test_clip_skip_beyond_the_text_encoder_is_400(client: httpx.Client) -> None:
    response = post(client, override_settings={"CLIP_stop_at_last_layers": 12})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "clip skip" in detail and "layers, so use 1.." in detail
    assert post(client, override_settings={"CLIP_stop_at_last_layers": 2}).status_code == 200


def test_clip_skip_beyond_the_model_is_input_invalid_through_the_worker(
    embedded_engine: EmbeddedEngine,
) -> None:
    from worker.a1111.client import A1111Client
    from worker.handler import JobRunner
    from worker.settings import WorkerSettings

    with A1111Client(embedded_engine.url) as engine:
        runner = JobRunner(WorkerSettings(a1111_url=embedded_engine.url), engine)  # type: ignore[arg-type]
        job = {"prompt": "a", "width": 64, "height": 64, "steps": 1, "clip_skip": 12}
        out = runner.run({"id": "clip", "input": {**job, "checkpoint": "demo-sd15-tiny"}})
    assert isinstance(out, dict) and out["error"].startswith("input_invalid: "), out
    assert "use 1.." in out["error"] and "refresh_worker" not in out


@pytest.mark.parametrize("field", ["seed_resize_from_w", "seed_resize_from_h"])
def test_a_huge_seed_resize_is_400_not_an_allocation(client: httpx.Client, field: str) -> None:
    response = post(client, **{"seed_resize_from_w": 64, "seed_resize_from_h": 64, field: 10**9})
    assert response.status_code == 400 and field in response.json()["detail"]
