"""Job → txt2img payload, table-driven over the named fixtures (the docs' examples)."""

from __future__ import annotations

import pytest

from tests.support.fixtures import StaticEngineLists, engine_catalog, job_fixture, load_json
from worker.preflight.resolver import Preflight
from worker.schema import GenerationRequest, Txt2ImgJob, parse_job_input
from worker.settings_baseline import SettingsBaseline
from worker.translate import (
    ResolvedNames,
    add_lora_tags,
    build_txt2img_payload,
    format_weight,
    rename_lora_tags,
)


def job_of(raw: dict) -> Txt2ImgJob:
    request = parse_job_input(raw, max_images=8)
    assert isinstance(request, GenerationRequest)
    return request.job


@pytest.mark.parametrize(
    "fixture",
    [
        "native_minimal",
        "native_full",
        "a1111_official_example",
        "a1111_body",
        "a1111_client_defaults",
        "envelope_txt2img",
    ],
)
def test_fixture_payloads(fixture: str) -> None:
    job = job_of(job_fixture(fixture)["input"])
    catalog = engine_catalog()
    names = Preflight(StaticEngineLists(catalog)).resolve(job).names
    # The engine's settings as A1111's /options reports them (clip skip as a float).
    baseline = SettingsBaseline(
        {
            "sd_model_checkpoint": catalog.current_checkpoint,
            "CLIP_stop_at_last_layers": 1.0,
            "sd_vae": "Automatic",
        }
    )
    payload = build_txt2img_payload(job, names, baseline.defaults()).payload
    assert payload == load_json(f"payloads/{fixture}.json")


NAMES = ResolvedNames(sampler="Euler")


@pytest.mark.parametrize(
    ("raw", "names", "expected_subset", "absent"),
    [
        # never inject defaults that change sampling (the eta anti-pattern)
        ({"prompt": "a"}, NAMES, {"sampler_name": "Euler"}, ["eta", "s_noise", "steps", "cfg_scale", "seed"]),
        ({"prompt": "a", "eta": 0.5}, NAMES, {"eta": 0.5}, ["s_noise"]),
        ({"prompt": "a", "clip_skip": 2}, NAMES, {"override_settings": {"CLIP_stop_at_last_layers": 2}}, []),
        (
            {"prompt": "a"},
            ResolvedNames(sampler="Euler", checkpoint_title="a.safetensors [0123456789]"),
            {"override_settings": {"sd_model_checkpoint": "a.safetensors [0123456789]"}},
            [],
        ),
        ({"prompt": "a", "save_images": True}, NAMES, {"save_images": False, "send_images": True}, []),
        ({"prompt": "a", "enable_hr": True}, NAMES, {"enable_hr": True, "denoising_strength": 0.7}, []),
        ({"prompt": "a", "hires": {"enabled": False}}, NAMES, {}, ["enable_hr", "denoising_strength"]),
        ({"prompt": "a", "denoising_strength": 0.3}, NAMES, {"denoising_strength": 0.3}, ["enable_hr"]),
        ({"prompt": "a", "styles": ["s1"], "tiling": True}, NAMES, {"styles": ["s1"], "tiling": True}, []),
        ({"prompt": "a", "n_iter": 3}, NAMES, {"n_iter": 3}, ["batch_size"]),
        (
            {"prompt": "a", "override_settings": {"sd_vae": "None", "eta_noise_seed_delta": 31337}},
            ResolvedNames(sampler="Euler", vae="None"),
            {"override_settings": {"sd_vae": "None", "eta_noise_seed_delta": 31337}},
            [],
        ),
    ],
)
def test_payload_rules(raw: dict, names: ResolvedNames, expected_subset: dict, absent: list[str]) -> None:
    payload = build_txt2img_payload(job_of(raw), names).payload
    for key, value in expected_subset.items():
        assert payload[key] == value
    for key in absent:
        assert key not in payload


@pytest.mark.parametrize(
    ("prompt", "loras", "expected", "warns"),
    [
        ("a cat", (("detail", 0.8),), "a cat <lora:detail:0.8>", False),
        ("a cat <lora:detail:0.8>", (("detail", 0.8),), "a cat <lora:detail:0.8>", False),
        ("a cat <LORA:Detail:0.5>", (("detail", 0.8),), "a cat <LORA:Detail:0.5>", True),
        ("", (("a", 1.0), ("b", -0.25)), "<lora:a:1> <lora:b:-0.25>", False),
        ("a cat ", (("x", 1.5),), "a cat <lora:x:1.5>", False),
        ("<lyco:detail:1>", (("detail", 1.0),), "<lyco:detail:1>", False),
    ],
)
def test_lora_tags(prompt: str, loras: tuple, expected: str, warns: bool) -> None:
    text, warnings = add_lora_tags(prompt, loras)
    assert text == expected
    assert bool(warnings) == warns


@pytest.mark.parametrize(
    ("weight", "text"), [(1.0, "1"), (0.8, "0.8"), (0.25, "0.25"), (-1.5, "-1.5"), (0, "0")]
)
def test_format_weight(weight: float, text: str) -> None:
    assert format_weight(weight) == text


def test_warnings_for_ignored_flags() -> None:
    translation = build_txt2img_payload(
        job_of({"prompt": "a", "send_images": False, "enable_hr": True}), NAMES
    )
    assert any("send_images=false" in w for w in translation.warnings)
    assert any("denoising_strength" in w for w in translation.warnings)


RENAMES = (("style", "style-kohya"),)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat <lora:style:0.8>", "a cat <lora:style-kohya:0.8>"),
        ("<lora:style>", "<lora:style-kohya>"),
        ("<lyco:style:1:0.5>", "<lyco:style-kohya:1:0.5>"),
        ("<lora:stylex:1> <lora:other:1>", "<lora:stylex:1> <lora:other:1>"),  # whole names only
        ("style <lora:style:1> <lora:style:0.2>", "style <lora:style-kohya:1> <lora:style-kohya:0.2>"),
    ],
)
def test_rename_lora_tags(prompt: str, expected: str) -> None:
    assert rename_lora_tags(prompt, RENAMES) == expected


def test_renamed_loras_reach_every_prompt_of_the_payload() -> None:
    job = job_of(
        {
            "prompt": "a <lora:style:0.5>",
            "negative_prompt": "<lora:style:-1>",
            "hires": {"enabled": True, "prompt": "b <lora:style:0.7>", "denoising_strength": 0.5},
        }
    )
    payload = build_txt2img_payload(job, ResolvedNames(sampler="Euler", lora_renames=RENAMES)).payload
    assert payload["prompt"] == "a <lora:style-kohya:0.5>"
    assert payload["negative_prompt"] == "<lora:style-kohya:-1>"
    assert payload["hr_prompt"] == "b <lora:style-kohya:0.7>"


def test_settings_baseline_sends_defaults_not_what_an_earlier_request_left() -> None:
    # /options as A1111 reports it after some request left clip skip 2 and a VAE behind
    options = {
        "sd_model_checkpoint": "a.safetensors [0123456789]",
        "CLIP_stop_at_last_layers": 2.0,
        "sd_vae": "leaked.safetensors",
        "eta_noise_seed_delta": 0.0,
        "samples_format": "png",
    }
    baseline = SettingsBaseline(options)
    assert baseline.defaults() == {
        "CLIP_stop_at_last_layers": 1,
        "sd_model_checkpoint": "a.safetensors [0123456789]",
        "sd_vae": "Automatic",
    }
    baseline.track({"eta_noise_seed_delta": 31337, "not_an_option": 1})
    defaults = baseline.defaults()
    assert defaults["eta_noise_seed_delta"] == 0 and isinstance(defaults["eta_noise_seed_delta"], int)
    assert "not_an_option" not in defaults  # A1111 would refuse it anyway (500 KeyError)


def test_a_job_overrides_the_baseline_and_restore_is_always_on() -> None:
    job = job_of({"prompt": "a", "clip_skip": 3, "override_settings_restore_afterwards": False})
    translation = build_txt2img_payload(job, NAMES, {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"})
    assert translation.payload["override_settings"] == {"CLIP_stop_at_last_layers": 3, "sd_vae": "Automatic"}
    assert translation.payload["override_settings_restore_afterwards"] is True
    assert any("restore_afterwards=false was ignored" in w for w in translation.warnings)
