"""In-process checks of the pieces the HTTP tests cannot see: prompt parsing, chunking, key conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusers_server.prompts import PromptChunker, extract_networks, parse_attention
from diffusers_server.samplers import SamplerError, resolve
from diffusers_server.tokenizer import cached_clip_tokenizer_dir, load_clip_tokenizer, write_byte_level_vocab


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
    assert [(t.kind, t.name, t.te_weight, t.unet_weight) for t in tags] == [
        ("lora", "foo", 0.5, 0.5),
        ("lora", "bar", 0.2, 0.9),
        ("lora", "baz", 0.1, 0.3),
    ]


@pytest.fixture(scope="module")
def chunker(tmp_path_factory: pytest.TempPathFactory) -> PromptChunker:
    folder = write_byte_level_vocab(Path(tmp_path_factory.mktemp("tok")))
    return PromptChunker(load_clip_tokenizer(folder), {})


def test_chunking_never_truncates(chunker: PromptChunker) -> None:
    chunks, count, _ = chunker.chunks("x" * 200)
    assert count == 200 and len(chunks) == 3
    assert all(len(c.tokens) == 77 for c in chunks)
    assert sum(t != chunker.eos for c in chunks for t in c.tokens[1:-1]) == 200


def test_break_and_comma_backtrack(chunker: PromptChunker) -> None:
    assert len(chunker.chunks("a BREAK b")[0]) == 2
    # a comma at position 70: the 5 tokens after it move to the next chunk instead of being split mid-phrase
    chunks, _, _ = chunker.chunks("y" * 69 + "," + "z" * 10)
    assert (
        chunks[0].tokens[71] == chunker.eos
        and chunks[1].tokens[1:11].count(chunker.tokenizer.convert_tokens_to_ids("z")) >= 5
    )


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


def test_cached_clip_tokenizer_is_found_offline(tmp_path: Path) -> None:
    assert cached_clip_tokenizer_dir(tmp_path) is None
    repo = tmp_path / "models--openai--clip-vit-large-patch14"
    snapshot = repo / "snapshots" / "0123abcd"
    write_byte_level_vocab(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    found = cached_clip_tokenizer_dir(tmp_path)
    assert found == snapshot
    assert load_clip_tokenizer(found)("a").input_ids[0] == 512  # <|startoftext|> of the cached vocabulary
