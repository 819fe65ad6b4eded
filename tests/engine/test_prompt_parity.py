"""The engine's prompt handling against A1111 v1.10.1's own, on the recorded prompt corpus.

``tests/fixtures/prompts/a1111_prompt_tables.json`` was recorded from A1111's modules by
``scripts/record_prompt_tables.py`` (re-record it with the command in that script's docstring). For every
case the engine must produce the same comment stripping, extra-network tags and LoRA multipliers (or the same
refusal), ``AND`` parts and weights, prompt-editing schedules (several step counts, hires, old timelines) and,
for the texts of each schedule, the same token ids, multipliers and embedding positions for the SD1.5
encoder and both SDXL encoders, chunk by chunk. Exact equality: no tolerance but float rounding of the
multipliers (1e-12).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from diffusers_server.conditioning import zeroed_negative
from diffusers_server.prompt_syntax import (
    PromptSyntaxError,
    extract_networks,
    lora_requests,
    prompt_schedule,
    split_and,
    strip_comments,
)
from diffusers_server.prompts import Chunk, Embedding, PromptChunker
from diffusers_server.tokenizer import clip_tokenizers

TABLES = Path(__file__).resolve().parents[1] / "fixtures" / "prompts" / "a1111_prompt_tables.json"
DATA = json.loads(TABLES.read_text(encoding="utf-8"))
CASES = DATA["cases"]


def _expand(runs: list[list[float]]) -> list[float]:
    return [value for value, count in runs for _ in range(int(count))]


def _case_id(index: int) -> str:
    case = CASES[index]
    text = case["text"].encode("unicode_escape").decode()[:40]
    return f"{index}-{case['kind'][:3]}-{text}{'-' + str(case['options']) if case['options'] else ''}"


@pytest.fixture(scope="module")
def chunkers() -> dict[tuple[str, str, int], PromptChunker]:
    """One chunker per (model kind, emphasis, comma backtrack) the corpus uses."""
    embeddings = {
        name: Embedding(name, {32: torch.zeros(count, 32)})
        for name, count in DATA["meta"]["embeddings"].items()
    }
    tokenizers = clip_tokenizers()
    made: dict[tuple[str, str, int], PromptChunker] = {}
    for case in CASES:
        emphasis = case["options"].get("emphasis", "Original")
        backtrack = case["options"].get("comma_padding_backtrack", 20)
        made[("sd15", emphasis, backtrack)] = PromptChunker(
            [tokenizers["transformers"]], embeddings, backtrack, emphasis
        )
        made[("sdxl", emphasis, backtrack)] = PromptChunker(
            [tokenizers["transformers"], tokenizers["open_clip"]], embeddings, backtrack, emphasis
        )
    return made


def _table(batches: list[list[Chunk]], model_input: Any) -> list[dict[str, Any]]:
    return [
        {
            "tokens": [model_input(c) for c in batch],
            "multipliers": [c.weights for c in batch],
            "fixes": [[[offset, emb.name] for offset, emb in c.fixes] for c in batch],
        }
        for batch in batches
    ]


def _recorded(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "tokens": [[int(t) for t in _expand(row)] for row in chunk["tokens"]],
            "multipliers": [_expand(row) for row in chunk["multipliers"]],
            "fixes": chunk["fixes"],
        }
        for chunk in table
    ]


def _assert_same_table(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], where: str) -> None:
    assert [c["tokens"] for c in ours] == [c["tokens"] for c in theirs], f"{where}: token ids"
    assert [c["fixes"] for c in ours] == [c["fixes"] for c in theirs], f"{where}: embedding positions"
    for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for row_a, row_b in zip(a["multipliers"], b["multipliers"], strict=True):
            assert row_a == pytest.approx(row_b, rel=1e-12, abs=1e-12), f"{where}: multipliers of chunk {n}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=_case_id)
def test_prompt_handling_matches_a1111(
    index: int, chunkers: dict[tuple[str, str, int], PromptChunker]
) -> None:
    case = CASES[index]
    options = case["options"]
    text = case["text"]
    if options.get("enable_prompt_comments", True):
        text = strip_comments(text)
    assert text == case["after_comments"]
    if case["kind"] == "positive":
        text, tags = extract_networks(text)
        assert text == case["after_networks"]
        grouped: dict[str, list[list[str]]] = {}
        for tag in tags:
            grouped.setdefault(tag.kind, []).append(list(tag.items))
        assert grouped == case["networks"]
        try:
            loras = [[r.name, r.te, r.unet, r.dyn] for r in lora_requests(tags)]
        except PromptSyntaxError:
            assert "error" in case["loras"], "A1111 accepts these LoRA arguments"
        else:
            assert loras == case["loras"].get("activated"), "LoRA multipliers"
        parts = split_and(text)
    else:
        parts = [(text, 1.0)]
    assert [[t, w] for t, w in parts] == case["parts"]
    for recorded in case["schedules"]:
        schedules = [
            [
                list(entry)
                for entry in prompt_schedule(t, recorded["steps"], recorded["hires_steps"], recorded["old"])
            ]
            for t, _ in parts
        ]
        # A1111 (lark 1.1.2) parses a few ambiguous prompts differently per process: any of its answers.
        for ours, theirs in zip(
            schedules, recorded.get("alternatives", [[p] for p in recorded["parts"]]), strict=True
        ):
            assert ours in theirs, f"schedule for {recorded}"
    emphasis = options.get("emphasis", "Original")
    backtrack = options.get("comma_padding_backtrack", 20)
    for part, encoded in zip(case["schedules"][0]["parts"], case["encoded"], strict=True):
        texts = [t for _, t in part]
        for kind in ("sd15", "sdxl"):
            chunker = chunkers[(kind, emphasis, backtrack)]
            if "error" in encoded:
                with pytest.raises(PromptSyntaxError):
                    chunker.encoders[0].batches(texts)
                continue
            for n, encoder in enumerate(chunker.encoders):
                batches, _ = encoder.batches(texts)
                _assert_same_table(
                    _table(batches, encoder.model_input), _recorded(encoded[kind][n]), f"{kind} encoder {n}"
                )
        if "error" not in encoded:
            assert zeroed_negative("sdxl", texts, negative=case["kind"] == "negative") == encoded["sdxl_zero"]
