"""worker.verify against what the real A1111 reported (tests/fixtures/a1111/exchanges.json).

Every txt2img the recorder sent is checked with the request it sent as the payload: the honest
generations pass, and each of A1111's silent substitutions is caught with the field named.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.a1111_behaviour import transcript
from tests.support.fake_a1111 import FakeA1111, FakeData
from worker.a1111.catalog import EngineCatalog
from worker.a1111.client import A1111Client
from worker.a1111.progress import GenerationProgress
from worker.errors import Cancelled, EngineFailed
from worker.verify import check_generation, check_not_interrupted, lora_hash_names, parse_infotext

#: recorded exchange → (what the worker would have asked instead, the mismatch it must report)
CAUGHT: dict[str, tuple[dict[str, Any], str]] = {
    "unknown_sampler_falls_back_silently": ({}, "sampler 'DPM++ 2M' instead of 'Euler ancestral'"),
    "sampler_alias_falls_back_silently": ({}, "sampler 'DPM++ 2M' instead of 'k_euler_a'"),
    "unknown_lora_ignored_silently": ({}, "LoRA 'tiny_lora_missing' was not applied"),
    "unknown_checkpoint_override_ignored_silently": (
        {},
        "checkpoint 'tiny_a' instead of the requested 'tiny_zzz'",
    ),
    "unknown_vae_becomes_none": ({}, "VAE None instead of 'nope.safetensors'"),
    "after_clip_skip_override_it_sticks": (
        {"override_settings": {"CLIP_stop_at_last_layers": 1}},
        "clip skip 2 instead of 1",
    ),
    "after_vae_override_it_sticks": (
        {"override_settings": {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 2}},
        "VAE 'tiny_vae.safetensors' instead of Automatic",
    ),
    "after_explicit_defaults_the_leak_is_back": (
        {"override_settings": {"sd_vae": "None", "CLIP_stop_at_last_layers": 1}},
        "clip skip 2 instead of 1; VAE 'tiny_vae.safetensors' instead of None",
    ),
    "minimal": (
        {"sampler_name": "Euler", "scheduler": "Karras"},
        "schedule type 'Automatic' instead of 'Karras'",
    ),
    "batch_and_iterations": ({"seed": 12}, "seeds [11, 12, 13, 14] instead of [12, 13, 14, 15]"),
    "cfg_and_negative_prompt": (
        {"cfg_scale": 5, "steps": 3},
        "steps 2 instead of 3; CFG scale 4.5 instead of 5",
    ),
    "hires_latent": ({"width": 128}, "width 64 instead of 128"),
    "checkpoint_override": (
        {"override_settings": {"sd_model_checkpoint": "tiny_a.safetensors [058c668532]"}},
        "checkpoint 'tiny_b' instead of the requested 'tiny_a'",
    ),
}


#: recorded requests the worker itself would spell differently (pre-flight splits and folds names)
AS_THE_WORKER_SENDS: dict[str, dict[str, Any]] = {
    "combined_sampler_name": {"sampler_name": "DPM++ 2M", "scheduler": "Karras"},
    "legacy_sampler_index": {"sampler_name": "Heun"},
}


@pytest.fixture(scope="module")
def recorded_catalog() -> Iterator[EngineCatalog]:
    """The catalog the worker builds from the recorded A1111's listings (through its real client)."""
    fake = FakeA1111()
    fake.data = FakeData.recorded()
    fake.start()
    try:
        with A1111Client(fake.url) as client:
            yield client.catalog()
    finally:
        fake.stop()


def generations() -> list[dict[str, Any]]:
    return [e for e in transcript("exchanges") if e["endpoint"] == "txt2img" and e["status"] == 200]


@pytest.mark.parametrize("exchange", generations(), ids=lambda e: e["name"])
def test_recorded_generation(exchange: dict[str, Any], recorded_catalog: EngineCatalog) -> None:
    response = exchange["response"]
    info, images = response["info"], response["images"]
    if exchange["name"] not in CAUGHT:
        payload = {**exchange["body"], **AS_THE_WORKER_SENDS.get(exchange["name"], {})}
        assert check_generation(payload, recorded_catalog, images, info) == []
        return
    changes, message = CAUGHT[exchange["name"]]
    payload = {**exchange["body"], **changes}
    with pytest.raises(EngineFailed) as caught:
        check_generation(payload, recorded_catalog, images, info)
    assert message in caught.value.message
    assert str(caught.value).startswith("engine_error: the engine did not generate what the job asked for")


def test_lora_use_is_not_verifiable_without_hashes(recorded_catalog: EngineCatalog) -> None:
    """Under --no-hashing A1111 writes no Lora hashes (nor Model hash): a warning, not a failure."""
    recorded = next(e for e in generations() if e["name"] == "lora_by_name")
    info = {**recorded["response"]["info"], "sd_model_hash": None, "extra_generation_params": {}}
    warnings = check_generation(recorded["body"], recorded_catalog, recorded["response"]["images"], info)
    assert warnings and "could not be verified" in warnings[0]
    with pytest.raises(EngineFailed, match="LoRA 'tiny_lora' was not applied"):
        check_generation(
            recorded["body"], recorded_catalog, recorded["response"]["images"], {**info, "sd_model_hash": "x"}
        )


def test_interruption_is_cancelled() -> None:
    after = transcript("progress")["after_interrupt"]["state"]
    progress = GenerationProgress(0.0, 0.0, 0, 60, active=False, interrupted=after["interrupted"])
    with pytest.raises(Cancelled) as caught:
        check_not_interrupted({}, progress)
    assert str(caught.value).startswith("cancelled: the engine's generation was interrupted")
    with pytest.raises(Cancelled):
        check_not_interrupted({"interrupted": True}, None)  # the embedded engine says so in info
    check_not_interrupted({}, GenerationProgress(0.0, 0.0, 0, 2, active=False, interrupted=False))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'a\nNegative prompt: b\nSteps: 2, Sampler: DPM++ 2M, Lora hashes: "x: 0123, y: 4567", Version: v1.10.1',
            {"Steps": "2", "Sampler": "DPM++ 2M", "Lora hashes": "x: 0123, y: 4567", "Version": "v1.10.1"},
        ),
        (
            'p\nSize: 64x64, Hires prompt: "a, \\"quoted\\" b"',
            {"Size": "64x64", "Hires prompt": 'a, "quoted" b'},
        ),
    ],
)
def test_parse_infotext(text: str, expected: dict[str, str]) -> None:
    assert parse_infotext(text) == expected


def test_lora_hash_names() -> None:
    assert lora_hash_names("tiny_lora: b6007a482618, other_v1: 0123456789ab") == {"tiny_lora", "other_v1"}
