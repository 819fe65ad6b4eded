"""``build_conds`` on the demo models, in-process: schedules, AND parts, unpadded negatives, SDXL's encoders."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from diffusers_server.conditioning import EncodeSettings, build_conds, encode_texts
from diffusers_server.models.pipelines import LoadedModel, Runtime, load_checkpoint
from diffusers_server.prompt_syntax import PromptSyntaxError
from diffusers_server.prompts import Embedding, PromptChunker
from diffusers_server.tokenizer import clip_tokenizers

SETTINGS = EncodeSettings(clip_stop=1, sdxl_clip_l_skip=False)


@pytest.fixture(scope="module")
def models(engine_models_dir: Path) -> dict[str, LoadedModel]:
    runtime = Runtime("cpu", torch.float32, False)
    skeletons = Path(tempfile.mkdtemp(prefix="conds-"))
    return {
        kind: load_checkpoint(
            engine_models_dir / "checkpoints" / f"demo-{kind}-tiny.safetensors", runtime, skeletons, None
        )
        for kind in ("sd15", "sdxl")
    }


def chunker_for(
    model: LoadedModel, embeddings: dict[str, Embedding] | None = None, emphasis: str = "Original"
) -> PromptChunker:
    tokenizers = clip_tokenizers()
    styles = ["transformers", "open_clip"] if model.kind == "sdxl" else ["transformers"]
    return PromptChunker([tokenizers[s] for s in styles], embeddings or {}, 20, emphasis)  # type: ignore[index]


def contexts(model: LoadedModel, texts: list[str], **kwargs: object) -> list[torch.Tensor]:
    conds, _ = encode_texts(model, chunker_for(model), texts, SETTINGS, **kwargs)  # type: ignore[arg-type]
    return [c.context for c in conds]


def test_prompt_editing_switches_encodings_at_a1111_steps(models: dict[str, LoadedModel]) -> None:
    model = models["sd15"]
    conds, _ = build_conds(model, chunker_for(model), ["a [cat:dog:0.5] photo"], [""], SETTINGS, steps=10)
    schedule = conds.positive[0].parts[0][0]
    assert [end for end, _ in schedule.entries] == [5, 10]
    cat, dog = contexts(model, ["a cat photo", "a dog photo"])
    assert torch.equal(schedule.at(5).context, cat) and torch.equal(schedule.at(6).context, dog)
    assert not torch.equal(cat, dog)


def test_hires_pass_schedules(models: dict[str, LoadedModel]) -> None:
    """Hires: fractions run 1..2 over the hires steps, integers count on from the first pass."""
    model, chunker = models["sd15"], chunker_for(models["sd15"])
    conds, _ = build_conds(
        model, chunker, ["[cat:dog:0.5]", "[cat:dog:12]"], ["", ""], SETTINGS, steps=10, hires_steps=4
    )
    assert [end for end, _ in conds.positive[0].parts[0][0].entries] == [4]
    assert [end for end, _ in conds.positive[1].parts[0][0].entries] == [2, 4]


def test_and_parts_keep_their_weights(models: dict[str, LoadedModel]) -> None:
    model = models["sd15"]
    conds, _ = build_conds(model, chunker_for(model), ["a cat:1.2 AND a dog:0.5"], [""], SETTINGS, steps=4)
    parts = conds.positive[0].parts
    assert [weight for _, weight in parts] == [1.2, 0.5]
    cat, dog = contexts(model, ["a cat"]) + contexts(model, [" a dog"])
    assert torch.equal(parts[0][0].at(1).context, cat) and torch.equal(parts[1][0].at(1).context, dog)


def test_negative_is_not_padded_and_keeps_its_tags_as_text(models: dict[str, LoadedModel]) -> None:
    model = models["sd15"]
    negative = "<lora:demo-lora-tiny:1> blurry"
    conds, _ = build_conds(
        model, chunker_for(model), [" ".join(["cat"] * 100)] * 3, [negative] * 3, SETTINGS, steps=4
    )
    assert conds.positive[0].parts[0][0].at(1).context.shape[0] == 154
    neg = conds.negative[0].at(1).context
    assert neg.shape[0] == 77
    assert torch.equal(neg, contexts(model, [negative])[0])
    assert not torch.equal(neg, contexts(model, ["blurry"])[0])
    # identical prompts are encoded once
    assert conds.positive[0] is conds.positive[2] and conds.negative[0] is conds.negative[1]


def test_original_emphasis_restores_the_mean_of_the_whole_schedule_batch(
    models: dict[str, LoadedModel],
) -> None:
    """A1111 encodes a prompt's schedule texts as one batch and restores the batch's mean, not each text's."""
    model = models["sd15"]
    alone = contexts(model, ["(cat:1.5)"])[0]
    with_other = contexts(model, ["(cat:1.5)", "dog"])[0]
    assert not torch.allclose(alone, with_other)
    raw = contexts(model, ["cat", "dog"])
    weights = torch.ones(77, 1)
    weights[1] = 1.5
    scaled = raw[0] * weights
    expected = scaled * ((raw[0].mean() + raw[1].mean()) / (scaled.mean() + raw[1].mean()))
    assert torch.allclose(with_other, expected, atol=1e-6)
    no_norm = encode_texts(model, chunker_for(model, emphasis="No norm"), ["(cat:1.5)", "dog"], SETTINGS)[0]
    assert torch.allclose(no_norm[0].context, scaled, atol=1e-6)


def test_embedding_vectors_replace_their_placeholder_tokens(models: dict[str, LoadedModel]) -> None:
    """An embedding holding the token vector of "cat" encodes exactly like the word."""
    model = models["sd15"]
    table = model.pipe.text_encoder.get_input_embeddings().weight
    cat = clip_tokenizers()["transformers"]("cat")[0]
    embedding = Embedding("zzqq", {32: table[cat : cat + 1].detach().clone()})
    conds, used = encode_texts(model, chunker_for(model, {"zzqq": embedding}), ["a zzqq photo"], SETTINGS)
    assert used == ["zzqq"]
    assert torch.equal(conds[0].context, contexts(model, ["a cat photo"])[0])


def test_sdxl_encodes_with_both_tokenizers_and_zeroes_an_empty_negative(
    models: dict[str, LoadedModel],
) -> None:
    model = models["sdxl"]
    chunker = chunker_for(model)
    conds, _ = build_conds(model, chunker, ["a cat", "a cat"], ["", " "], SETTINGS, steps=4)
    positive = conds.positive[0].parts[0][0].at(1)
    assert positive.context.shape == (77, 32 + 64) and positive.pooled is not None
    assert positive.pooled.shape == (64,)
    empty = conds.negative[0].at(1)
    assert not empty.context.any() and empty.pooled is not None and not empty.pooled.any()
    assert conds.negative[1].at(1).context.any()  # " " is not empty for A1111
    clip_g = chunker.encoders[1]
    ids = clip_g.model_input(clip_g.chunks("a cat")[0][0])
    assert ids[:5] == [49406, 320, 2368, 49407, 0] and set(ids[4:]) == {0}


def test_sdxl_prompt_that_the_two_tokenizers_chunk_differently_is_refused(
    models: dict[str, LoadedModel],
) -> None:
    """With a ``<`` on the line ftfy keeps ``&amp;`` (3 CLIP-L tokens); open_clip unescapes it (1 token)."""
    model = models["sdxl"]
    with pytest.raises(PromptSyntaxError, match="3 chunks for CLIP-L but 1 for CLIP-G"):
        encode_texts(model, chunker_for(model), ["< " + "&amp; " * 60], SETTINGS)
