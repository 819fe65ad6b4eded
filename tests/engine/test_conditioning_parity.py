"""``build_conds`` against the conditioning A1111 v1.10.1 itself computes with the same tiny SD1.5 text encoder.

``tests/fixtures/prompts/a1111_conds_sd15_tiny.json`` was recorded by ``scripts/record_prompt_tables.py
--demo-models`` (A1111's ``get_multicond_learned_conditioning`` and hijacked CLIP wrapper on the demo model's
text encoder and embedding): part weights, schedule steps and every encoding must agree, to 1e-5 of the
largest value (fp32 rounding: the two sides run different transformers versions of the same CLIP, and the
emphasis mean is summed in another order; measured worst case 4e-6).
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_server.conditioning import EncodeSettings, build_conds
from diffusers_server.models.pipelines import LoadedModel, Runtime, load_checkpoint
from diffusers_server.prompts import Embedding, PromptChunker
from diffusers_server.tokenizer import clip_tokenizers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "prompts"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "a1111_conds_sd15_tiny.json").read_text())["cases"]
SDXL_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "a1111_conds_sdxl_tiny.json").read_text())["cases"]
TOLERANCE = 1e-5


def _load(models_dir: Path, kind: str) -> LoadedModel:
    path = models_dir / "checkpoints" / f"demo-{kind}-tiny.safetensors"
    return load_checkpoint(path, Runtime("cpu", torch.float32, False), Path(tempfile.mkdtemp()), None)


@pytest.fixture(scope="module")
def model(engine_models_dir: Path) -> LoadedModel:
    return _load(engine_models_dir, "sd15")


@pytest.fixture(scope="module")
def sdxl_model(engine_models_dir: Path) -> LoadedModel:
    return _load(engine_models_dir, "sdxl")


@pytest.fixture(scope="module")
def embeddings(engine_models_dir: Path) -> dict[str, Embedding]:
    name = "demo-embedding-tiny"
    vectors = load_file(str(engine_models_dir / "embeddings" / f"{name}.safetensors"))["emb_params"]
    return {name: Embedding(name, {int(vectors.shape[-1]): vectors.float()})}


def _tensor(shape: list[int], data: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(data), dtype=np.float32).reshape(shape).copy())


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    difference = float((ours - theirs).abs().max())
    scale = max(1.0, float(theirs.abs().max()))
    assert difference <= TOLERANCE * scale, f"largest difference {difference:.2e} (values up to {scale:.2f})"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['kind']}-{c['prompt'][:30]}-{c['options']}")
def test_conditioning_matches_a1111(
    case: dict[str, Any], model: LoadedModel, embeddings: dict[str, Embedding]
) -> None:
    options = case["options"]
    emphasis = options.get("emphasis", "Original")
    chunker = PromptChunker([clip_tokenizers()["transformers"]], embeddings, 20, emphasis)
    settings = EncodeSettings(options.get("CLIP_stop_at_last_layers", 1), False, emphasis)
    prompt, steps = case["prompt"], case["steps"]
    if case["kind"] == "positive":
        conds, _ = build_conds(model, chunker, [prompt], [""], settings, steps=steps)
        parts = list(conds.positive[0].parts)
    else:
        conds, _ = build_conds(model, chunker, [""], [prompt], settings, steps=steps)
        parts = [(conds.negative[0], 1.0)]
    assert [weight for _, weight in parts] == [part["weight"] for part in case["parts"]]
    for (schedule, _), recorded in zip(parts, case["parts"], strict=True):
        assert [end for end, _ in schedule.entries] == [end for end, _, _ in recorded["schedule"]]
        for (_, cond), (_, shape, data) in zip(schedule.entries, recorded["schedule"], strict=True):
            _assert_close(cond.context, _tensor(shape, data))


@pytest.mark.parametrize("case", SDXL_CASES, ids=lambda c: f"{c['kind']}-{c['prompt'][:30]}-{c['options']}")
def test_sdxl_conditioning_matches_a1111(case: dict[str, Any], sdxl_model: LoadedModel) -> None:
    """Both encoders side by side (CLIP-L, then CLIP-G from open_clip tokens), the pooled CLIP-G vector."""
    tokenizers = clip_tokenizers()
    chunker = PromptChunker([tokenizers["transformers"], tokenizers["open_clip"]], {}, 20, "Original")
    options = case["options"]
    settings = EncodeSettings(
        options.get("CLIP_stop_at_last_layers", 1), options.get("sdxl_clip_l_skip", False)
    )
    prompts, negatives = ([case["prompt"]], [""]) if case["kind"] == "positive" else ([""], [case["prompt"]])
    conds, _ = build_conds(sdxl_model, chunker, prompts, negatives, settings, steps=case["steps"])
    schedule = conds.positive[0].parts[0][0] if case["kind"] == "positive" else conds.negative[0]
    assert [end for end, _ in schedule.entries] == [end for end, *_ in case["schedule"]]
    for (_, cond), (_, shape, context, pooled) in zip(schedule.entries, case["schedule"], strict=True):
        _assert_close(cond.context, _tensor(shape, context))
        assert cond.pooled is not None
        _assert_close(cond.pooled, _tensor([-1], pooled))
