"""Hires fix (``enable_hr``): sizes, infotext, upscalers, second-pass steps, errors, determinism, SDXL."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from diffusers_server import hires
from diffusers_server.sampling.run import img2img_steps
from diffusers_server.sampling.schedules import (
    DiscreteSchedule,
    ScheduleOptions,
    build_sigmas,
    train_alphas_cumprod,
)
from tests.engine.conftest import SMALL, png, txt2img
from tests.engine.test_errors import _a1111_error
from tests.support.polling import poll_until

HR = {"enable_hr": True, "denoising_strength": 0.5, "hr_second_pass_steps": 1, "seed": 11}


def _hr(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    return txt2img(client, **{**HR, **fields})


def _pixels(body: dict[str, Any]) -> bytes:
    return png(body["images"][0]).tobytes()


def _params(body: dict[str, Any]) -> str:
    return str(body["info"]["infotexts"][0].splitlines()[-1])


def test_scale_latent_upscaler_size_info_and_infotext(client: httpx.Client) -> None:
    body = _hr(client, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2)
    assert png(body["images"][0]).size == (96, 96)
    info = body["info"]
    assert (info["width"], info["height"]) == (64, 64)  # A1111 reports the first-pass size
    assert info["denoising_strength"] == 0.5
    params = _params(body)
    assert (
        "Size: 64x64, Model hash: " in params
        and "Model: demo-sd15-tiny, Denoising strength: 0.5, "
        "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, Version: "
        in params
    )
    extra = info["extra_generation_params"]
    assert extra["Denoising strength"] == 0.5 and extra["Hires upscaler"] == "Latent"
    assert extra["Hires prompt"] is None and "Hires resize" not in extra
    parsed = client.post("/png-info", json={"image": body["images"][0]}).json()["parameters"]
    assert parsed["Hires upscale"] == "1.5" and parsed["Denoising strength"] == "0.5"


def test_explicit_resize_and_image_upscaler(client: httpx.Client) -> None:
    both = _hr(client, hr_resize_x=96, hr_resize_y=80, hr_upscaler="Lanczos")
    assert png(both["images"][0]).size == (96, 80)  # cover, then crop the centre (A1111)
    params = _params(both)
    assert "Hires resize: 96x80, Hires steps: 1, Hires upscaler: Lanczos" in params
    assert "Hires upscale:" not in params
    one_side = _hr(client, width=64, height=48, hr_resize_x=128, hr_upscaler="Nearest")
    assert png(one_side["images"][0]).size == (128, 96)  # keeps the aspect ratio
    assert (one_side["info"]["width"], one_side["info"]["height"]) == (64, 48)


@pytest.mark.parametrize("upscaler", [*hires.LATENT_UPSCALE_MODES, "None"])
def test_every_listed_upscaler_runs(client: httpx.Client, upscaler: str) -> None:
    body = _hr(client, steps=1, hr_scale=1.25, hr_upscaler=upscaler)
    assert png(body["images"][0]).size == (80, 80)


def test_defaults_null_upscaler_and_zero_steps(client: httpx.Client) -> None:
    fields = {"enable_hr": True, "denoising_strength": 0.3, "seed": 2, "steps": 2, "hr_scale": 1.5}
    body = txt2img(client, **fields)
    assert png(body["images"][0]).size == (96, 96)
    # A1111 writes "Hires steps"/"Hires upscaler" only when the request sets them.
    assert "Denoising strength: 0.3, Hires upscale: 1.5, Version" in _params(body)
    explicit = txt2img(client, **fields, hr_upscaler="Latent", hr_second_pass_steps=2)
    assert "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent" in _params(explicit)
    # Pixels, not bytes (the infotexts differ): null upscaler = "Latent", 0 steps = `steps`.
    assert _pixels(explicit) == _pixels(body)
    assert _pixels(txt2img(client, **{**fields, "denoising_strength": 0.6})) != _pixels(body)


def test_same_seed_same_bytes_and_steps_matter(client: httpx.Client) -> None:
    first = _hr(client, hr_scale=1.5, batch_size=2)
    again = _hr(client, hr_scale=1.5, batch_size=2)
    assert first["images"] == again["images"] and len(first["images"]) == 2
    assert png(first["images"][0]).tobytes() != png(first["images"][1]).tobytes()
    more = _hr(client, hr_second_pass_steps=3, hr_scale=1.5, batch_size=2)
    assert _pixels(more) != _pixels(first)
    plain = txt2img(client, seed=11)
    assert png(plain["images"][0]).size == (64, 64)


def test_hires_sampler_prompt_and_schedule_keys(client: httpx.Client) -> None:
    body = _hr(
        client,
        hr_scale=1.5,
        prompt="a cat",
        hr_prompt="a cat, (detailed:1.2)",
        hr_sampler_name="DPM++ 2M",
        hr_scheduler="Exponential",
        override_settings={"CLIP_stop_at_last_layers": 2},
    )
    params = _params(body)
    # A1111's create_infotext: "Denoising strength" before "Clip skip", then extra_generation_params.
    assert (
        'Denoising strength: 0.5, Clip skip: 2, Hires sampler: DPM++ 2M, Hires prompt: "a cat, (detailed:1.2)", '
        "Hires schedule type: Exponential, Hires upscale: 1.5, Hires steps: 1, Version" in params
    )
    same = _hr(client, hr_scale=1.5, prompt="a cat", hr_prompt="a cat", hr_sampler_name="Euler a")
    assert "Hires sampler" not in _params(same) and "Hires prompt" not in _params(same)


def test_hires_pass_applies_the_lora(client: httpx.Client) -> None:
    base = _hr(client, hr_scale=1.5, prompt="x", hr_second_pass_steps=2)
    lora_in_hr = _hr(
        client, hr_scale=1.5, prompt="x", hr_second_pass_steps=2, hr_prompt="x <lora:demo-lora-tiny:1>"
    )
    assert lora_in_hr["images"] != base["images"]
    assert "Lora hashes:" in _params(lora_in_hr) and "Hires prompt:" in _params(lora_in_hr)
    # The adapters are restored afterwards: the LoRA does not leak into the next request.
    again = _hr(client, hr_scale=1.5, prompt="x", hr_second_pass_steps=2)
    assert again["images"] == base["images"]


def test_sdxl_hires(client: httpx.Client) -> None:
    body = _hr(
        client,
        hr_scale=1.5,
        hr_upscaler="Latent (bicubic)",
        override_settings={"sd_model_checkpoint": "demo-sdxl-tiny"},
    )
    assert png(body["images"][0]).size == (96, 96)
    assert body["info"]["sd_model_name"] == "demo-sdxl-tiny"
    image = _hr(
        client,
        hr_resize_x=80,
        hr_upscaler="Lanczos",
        override_settings={"sd_model_checkpoint": "demo-sdxl-tiny"},
    )
    assert png(image["images"][0]).size == (80, 80)
    assert "Hires resize: 80x0" in _params(image)


def test_upscaler_listings(client: httpx.Client) -> None:
    assert [u["name"] for u in client.get("/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    modes = [m["name"] for m in client.get("/latent-upscale-modes").json()]
    assert modes == list(hires.LATENT_UPSCALE_MODES)


@pytest.mark.parametrize(
    ("fields", "status", "needles"),
    [
        ({"denoising_strength": None}, 400, ("denoising_strength",)),
        ({"denoising_strength": 1.5}, 400, ("denoising_strength",)),
        ({"hr_upscaler": "4x-UltraSharp"}, 404, ("'4x-UltraSharp'", "Latent (nearest-exact)", "Lanczos")),
        ({"hr_sampler_name": "nope"}, 404, ("'nope'", "Euler a")),
        ({"hr_scheduler": "wiggly"}, 404, ("'wiggly'", "Karras")),
        ({"hr_scale": 100}, 400, ("hires size",)),
        ({"hr_resize_x": -8}, 400, ("hr_resize_x",)),
        ({"hr_checkpoint_name": "missing"}, 404, ("'missing'",)),
        ({"hr_checkpoint_name": "demo-sdxl-tiny"}, 400, ("hr_checkpoint_name", "Use same checkpoint")),
        ({"hr_prompt": "x <lora:nope:1>"}, 404, ("'nope'",)),
    ],
)
def test_hires_errors(
    client: httpx.Client, fields: dict[str, Any], status: int, needles: tuple[str, ...]
) -> None:
    response = client.post("/txt2img", json={**SMALL, **HR, **fields})
    _a1111_error(response, status, *needles)


def test_same_checkpoint_name_is_accepted(client: httpx.Client) -> None:
    body = _hr(client, hr_scale=1.5, hr_checkpoint_name="demo-sd15-tiny")
    assert "Hires checkpoint: demo-sd15-tiny [" in _params(body)
    same = _hr(client, hr_scale=1.5, hr_checkpoint_name="Use same checkpoint")
    assert "Hires checkpoint" not in _params(same) and _pixels(same) == _pixels(body)


def test_progress_counts_both_passes_and_interrupt_in_second_pass(client: httpx.Client) -> None:
    hr_steps = 400
    result: dict[str, Any] = {}
    payload = {**SMALL, **HR, "steps": 2, "hr_scale": 1.5, "hr_second_pass_steps": hr_steps}

    def run() -> None:
        result["response"] = client.post("/txt2img", json=payload)

    def in_second_pass() -> dict[str, Any] | None:
        progress: dict[str, Any] = client.get("/progress").json()
        state = progress["state"]
        return progress if state["job_no"] == 1 and state["sampling_step"] >= 2 else None

    thread = threading.Thread(target=run)
    thread.start()
    progress = poll_until(in_second_pass, "the second pass reporting step 2", timeout_s=60)
    assert progress["state"]["job_count"] == 2 and progress["state"]["sampling_steps"] == hr_steps
    assert 0.5 < progress["progress"] < 1
    assert client.post("/interrupt").json() == {}
    thread.join(timeout=60)
    response = result["response"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert png(body["images"][0]).size == (96, 96)
    assert '"interrupted": true' in body["info"]


def test_img2img_schedule_runs_exactly_the_requested_steps() -> None:
    """A1111 builds ``int(steps / strength)`` sigmas and samples the last ``steps`` of them."""
    schedule = DiscreteSchedule(train_alphas_cumprod())
    opts = ScheduleOptions()
    for steps in range(1, 40):
        for strength in (0.01, 0.1, 0.3, 0.33, 0.5, 0.7, 0.75, 0.999, 1.0):
            total, t_enc = img2img_steps(steps, strength)
            assert total == int(steps / min(strength, 0.999))
            for name in ("automatic", "karras"):
                sigmas = build_sigmas(
                    name, total, schedule, sdxl=False, discard_next_to_last=False, opts=opts, default_rho=7.0
                )
                sched = sigmas[total - t_enc - 1 :]
                assert len(sched) - 1 == steps, (steps, strength)
                assert sched[-1] == 0


def test_target_matches_a1111() -> None:
    assert hires.target(64, 64, 1.5, 0, 0).size == (96, 96)
    assert hires.target(64, 48, 2.0, 128, 0).size == (128, 96)
    assert hires.target(64, 48, 2.0, 0, 96).size == (128, 96)
    crop = hires.target(64, 64, 2.0, 96, 80)
    assert (crop.upscale_x, crop.upscale_y, crop.truncate_x, crop.truncate_y) == (96, 96, 0, 2)
    assert crop.size == (96, 80)
    assert hires.target(72, 72, 1.5, 0, 0).size == (104, 104)  # latent size = target // 8
