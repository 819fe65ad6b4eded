"""Issue 9's input limits: booleans are not numbers, NaN/Infinity are refused everywhere, out-of-range seeds
of any size are ``input_invalid``, and an error quotes at most a short excerpt of the caller's value."""

from __future__ import annotations

from typing import Any

import pytest

from worker.a1111.client import A1111Client
from worker.errors import InputInvalid, excerpt
from worker.handler import JobRunner
from worker.schema import GenerationRequest, parse_job_input
from worker.settings import WorkerSettings


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(InputInvalid) as info:
        parse_job_input(raw, max_images=8)
    return info.value.message


@pytest.mark.parametrize(
    "field", ["steps", "cfg_scale", "seed", "width", "batch_size", "clip_skip", "num_inference_steps"]
)
@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_numbers(field: str, value: bool) -> None:
    message = refused({"prompt": "a", field: value})
    assert f"input.{field}={value!r}" in message and "not true/false" in message


def test_booleans_are_still_booleans() -> None:
    request = parse_job_input({"prompt": "a", "tiling": True, "restore_faces": False}, max_images=8)
    assert isinstance(request, GenerationRequest) and request.job.tiling is True


def test_loras_and_hires_numbers_refuse_booleans_too() -> None:
    assert "input.loras.0.weight=True" in refused({"prompt": "a", "loras": [{"name": "x", "weight": True}]})
    assert "input.hires.steps=True" in refused({"prompt": "a", "hires": {"steps": True}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    ("path", "build"),
    [
        ("input.cfg_scale", lambda v: {"cfg_scale": v}),
        ("input.s_churn", lambda v: {"s_churn": v}),  # a field without bounds
        (
            "input.override_settings.CLIP_stop_at_last_layers",
            lambda v: {"override_settings": {"CLIP_stop_at_last_layers": v}},
        ),
        ("input.script_args.1", lambda v: {"script_args": [1, v]}),
    ],
)
def test_non_finite_numbers_are_refused_anywhere(path: str, build: Any, value: float) -> None:
    message = refused({"prompt": "a", **build(value)})
    assert path in message and "finite" in message


@pytest.mark.parametrize(
    "seed", [2**32, 2**64, -2, 10**5000, -(10**5000)], ids=["2**32", "2**64", "-2", "10**5000", "-10**5000"]
)
def test_seeds_out_of_range_of_any_size(seed: int) -> None:
    message = refused({"prompt": "a", "seed": seed})
    assert message.startswith("input.seed=") and len(message) < 200


def test_a_megabyte_prompt_is_quoted_as_a_short_excerpt() -> None:
    message = refused({"prompt": "x" * 2**20})
    assert len(message) < 300 and "1048576 characters" in message


@pytest.mark.parametrize(
    "raw",
    [
        {"prompt": "a", "checkpoint": "c" * 100_000},
        {"prompt": "a", "x" * 100_000: 1},
        {"prompt": "a", "sampler": "s" * 500, "sampler_name": "t" * 500},
        {"prompt": "a", "hires": {"prompt": "p" * 30_000}},
    ],
)
def test_errors_never_echo_a_long_value(raw: dict[str, Any]) -> None:
    assert len(refused(raw)) < 2_000


def test_excerpt() -> None:
    assert excerpt("short") == "'short'"
    assert excerpt(10**5000) == "<integer of about 5001 digits>"
    long = excerpt("y" * 1000)
    assert long.endswith("… (1000 characters)") and len(long) < 120


def test_huge_seed_through_the_handler_is_input_invalid_not_a_crash() -> None:
    runner = JobRunner(WorkerSettings(), A1111Client("http://127.0.0.1:9"))  # never reached
    out = runner.run({"id": "big", "input": {"prompt": "a", "seed": 10**5000}})
    assert isinstance(out, dict) and out["error"].startswith("input_invalid: input.seed=<integer of about")
    assert "refresh_worker" not in out
