"""Every listing endpoint answers in A1111 v1.10's shape, with what is true for this engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from diffusers_server.demo_models import EMBEDDING_NAME, LORA_NAME, SD15_NAME, SDXL_NAME, VAE_NAME
from tests.support.embedded_engine import EmbeddedEngine


def test_sd_models_titles_and_hashes(client: httpx.Client, embedded_engine: EmbeddedEngine) -> None:
    import hashlib

    models = client.get("/sd-models").json()
    assert [m["model_name"] for m in models] == [SD15_NAME, SDXL_NAME]
    for model in models:
        assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}
        sha = hashlib.sha256(Path(model["filename"]).read_bytes()).hexdigest()
        assert model["sha256"] == sha
        assert model["hash"] == sha[:10]
        assert model["title"] == f"{model['model_name']}.safetensors [{sha[:10]}]"


def test_samplers_and_schedulers_shape(client: httpx.Client) -> None:
    samplers = client.get("/samplers").json()
    names = [s["name"] for s in samplers]
    assert names[:2] == ["DPM++ 2M", "DPM++ SDE"] and "Euler a" in names
    assert len(names) == 20 and {"DPM fast", "Restart", "DDIM CFG++", "LCM"} <= set(names)  # all of A1111's
    for s in samplers:
        assert set(s) == {"name", "aliases", "options"}
        assert all(isinstance(v, str) for v in s["options"].values())
    schedulers = client.get("/schedulers").json()
    assert schedulers[0] == {
        "name": "automatic",
        "label": "Automatic",
        "aliases": None,
        "default_rho": -1.0,
        "need_inner_model": False,
    }
    assert len(schedulers) == 12
    assert {s["label"] for s in schedulers} >= {
        "Karras",
        "Polyexponential",
        "KL Optimal",
        "Align Your Steps",
        "Beta",
    }


def test_loras_embeddings_vae(client: httpx.Client) -> None:
    loras = client.get("/loras").json()
    assert [(lo["name"], lo["alias"]) for lo in loras] == [(LORA_NAME, LORA_NAME)]
    assert loras[0]["metadata"]["diffusers_server.random_weights"] == "true"
    embeddings = client.get("/embeddings").json()
    assert embeddings["loaded"][EMBEDDING_NAME]["vectors"] == 2
    assert embeddings["loaded"][EMBEDDING_NAME]["shape"] == 32
    assert client.get("/sd-vae").json()[0]["model_name"] == f"{VAE_NAME}.safetensors"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/hypernetworks", []),
        ("/face-restorers", []),
        ("/realesrgan-models", []),
        ("/prompt-styles", []),
        ("/scripts", {"txt2img": [], "img2img": []}),
    ],
)
def test_empty_listings(client: httpx.Client, path: str, expected: object) -> None:
    assert client.get(path).json() == expected


def test_misc_endpoints(client: httpx.Client) -> None:
    assert client.get("/latent-upscale-modes").json()[0] == {"name": "Latent"}
    assert client.get("/upscalers").json()[0]["name"] == "None"
    memory = client.get("/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["used"] > 0 and "cuda" in memory
    flags = client.get("/cmd-flags").json()
    assert flags["ckpt_dir"].endswith("checkpoints") and flags["nowebui"] is True
    progress = client.get("/progress").json()
    assert set(progress) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert {"job_count", "sampling_step", "sampling_steps", "interrupted", "skipped"} <= set(
        progress["state"]
    )
    for path in ("/refresh-checkpoints", "/refresh-loras", "/refresh-embeddings", "/refresh-vae"):
        response = client.post(path)
        assert response.status_code == 200 and response.json() is None
    assert client.post("/skip").status_code == 200


def test_options_roundtrip(client: httpx.Client) -> None:
    options = client.get("/options").json()
    assert options["sd_model_checkpoint"].startswith(f"{SD15_NAME}.safetensors [")
    assert options["CLIP_stop_at_last_layers"] == 1
    assert client.post("/options", json={"jpeg_quality": 90}).status_code == 200
    assert client.get("/options").json()["jpeg_quality"] == 90
    client.post("/options", json={"jpeg_quality": 80})


def _another_value(value: Any) -> Any:
    """A value of the option's own type that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "x"]
    return f"{value or ''}x"


def test_every_option_a1111_lists_is_listed_and_kept(client: httpx.Client) -> None:
    """Issue 17: ``send_seed`` (an A1111 option) was not kept; A1111 keeps every option it lists."""
    from diffusers_server import options
    from tests.support.a1111_behaviour import transcript

    recorded = transcript("listings")["options"]  # A1111 v1.10.1's own GET /options
    listed = client.get("/options").json()
    assert list(listed) == list(recorded)
    inert = [k for k in recorded if k not in options.HONOURED | options.REFUSED_UNLESS_DEFAULT]
    changed = {key: _another_value(listed[key]) for key in inert}
    try:
        assert client.post("/options", json=changed).status_code == 200
        kept = client.get("/options").json()
        assert {key: kept[key] for key in changed} == changed
        assert kept["send_seed"] is False
    finally:
        client.post("/options", json={key: listed[key] for key in inert})
    assert client.get("/options").json() == listed
