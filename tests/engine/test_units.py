"""In-process checks of the pieces the HTTP tests cannot see: prompt parsing, chunking, key conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusers_server.prompt_syntax import extract_networks, lora_requests
from diffusers_server.prompts import PromptChunker, TokenChunker, parse_attention
from diffusers_server.samplers import SamplerError, resolve
from diffusers_server.tokenizer import ClipVocabulary, VocabularyError, clip_tokenizers, load_vocabulary


def test_parse_attention_matches_a1111() -> None:
    assert parse_attention("a (b:1.5) [c] ((d))") == [
        ("a ", 1.0),
        ("b", 1.5),
        (" ", 1.0),
        ("c", pytest.approx(1 / 1.1)),
        (" ", 1.0),
        ("d", pytest.approx(1.21)),
    ]
    assert parse_attention(r"\(literal\)") == [("(literal)", 1.0)]
    assert ("BREAK", -1.0) in parse_attention("a BREAK b")


def test_extract_networks() -> None:
    text, tags = extract_networks("x <lora:foo:0.5> y <lyco:bar:0.2:0.9> <lora:baz:te=0.1:unet=0.3>")
    assert text == "x  y  "
    assert [(r.name, r.te, r.unet) for r in lora_requests(tags)] == [
        ("foo", 0.5, 0.5),
        ("bar", 0.2, 0.9),
        ("baz", 0.1, 0.3),
    ]


@pytest.fixture(scope="module")
def chunker() -> TokenChunker:
    return PromptChunker([clip_tokenizers()["transformers"]], {}).encoders[0]


def test_chunking_never_truncates(chunker: TokenChunker) -> None:
    chunks, count, _ = chunker.chunks(" ".join(["x"] * 200))
    assert count == 200 and len(chunks) == 3
    assert all(len(c.tokens) == 77 for c in chunks)
    assert sum(t != chunker.tokenizer.end for c in chunks for t in c.tokens[1:-1]) == 200


def test_break_and_comma_backtrack(chunker: TokenChunker) -> None:
    assert len(chunker.chunks("a BREAK b")[0]) == 2
    # a comma at position 70: the 5 tokens after it move to the next chunk instead of being split mid-phrase
    chunks, _, _ = chunker.chunks(" ".join(["y"] * 69) + ", " + " ".join(["z"] * 10))
    z = chunker.tokenizer("z")[0]
    assert chunks[0].tokens[71] == chunker.tokenizer.end and chunks[1].tokens[1:11].count(z) == 10


def test_vocabulary_comes_from_the_openai_clip_package() -> None:
    """CLIP's real vocabulary out of the box: 49408 tokens, real ids for real words."""
    tokenizer = clip_tokenizers()["transformers"]
    assert (tokenizer.start, tokenizer.end, tokenizer.comma) == (49406, 49407, 267)
    assert tokenizer("a photo of a cat") == [320, 1125, 539, 320, 2368]


def test_clip_tokenizer_folder_round_trip(tmp_path: Path) -> None:
    """``--clip-tokenizer DIR``: a vocab.json + merges.txt folder gives the same vocabulary; others are refused."""
    folder = load_vocabulary().write_folder(tmp_path / "tok")
    assert ClipVocabulary.from_folder(folder) == load_vocabulary()
    (folder / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(VocabularyError, match="does not match"):
        ClipVocabulary.from_folder(folder)
    with pytest.raises(VocabularyError, match="cannot read"):
        ClipVocabulary.from_folder(tmp_path / "missing")


def test_sampler_resolution() -> None:
    karras = resolve("DPM++ 2M Karras", None)
    assert (karras.sampler.name, karras.schedule.label) == ("DPM++ 2M", "Karras")
    assert resolve("DPM fast", "Align Your Steps").schedule.name == "align_your_steps"
    assert resolve("DPM++ 2M", None).schedule.label == "Karras"  # Automatic → the sampler's own default
    assert resolve("Euler", "karras").schedule.label == "Karras"
    assert resolve(None, None).sampler.name == "Euler"  # sampler_index default
    with pytest.raises(SamplerError, match="DPM fast"):  # the message lists the valid samplers
        resolve("DPM slow", None)
    with pytest.raises(SamplerError, match="KL Optimal"):
        resolve("Euler", "Wiggly")


def test_ldm_roundtrip_is_bit_exact(engine_models_dir: Path) -> None:
    """The demo checkpoint loads through diffusers' own LDM→diffusers path back into identical tensors."""
    import tempfile

    from safetensors.torch import load_file

    from diffusers_server.models.ldm_keys import clip_to_ldm, unet_to_ldm, vae_to_ldm
    from diffusers_server.models.pipelines import Runtime, load_checkpoint

    path = engine_models_dir / "checkpoints" / "demo-sd15-tiny.safetensors"
    model = load_checkpoint(path, Runtime("cpu", torch.float32, False), Path(tempfile.mkdtemp()), None)
    stored = load_file(str(path))
    pipe = model.pipe
    converted = (
        unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
        | vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config))
        | clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer.")
    )
    converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
    assert converted.keys() == stored.keys()
    assert all(torch.equal(converted[k], stored[k]) for k in stored)


def test_demo_models_are_byte_identical_across_runs(engine_models_dir: Path, tmp_path: Path) -> None:
    """Deterministic files mean stable sha256 titles, which the worker's registry and tests rely on."""
    from diffusers_server.demo_models import make_demo_models

    for path in make_demo_models(tmp_path, sdxl=True).values():
        assert path.read_bytes() == (engine_models_dir / path.relative_to(tmp_path)).read_bytes(), path.name
