"""CLIP tokenizers that work offline.

The real CLIP BPE vocabulary (49408 tokens) ships with no installed package and the Hugging Face hub is off
limits, so the engine builds a *byte-level* CLIP vocabulary in code: every byte is one token, with and without
CLIP's ``</w>`` end-of-word marker, plus ``<|startoftext|>``/``<|endoftext|>`` (514 tokens, no merges). The
tiny demo models are trained against nothing, so any consistent vocabulary serves them. Real checkpoints need
the real vocabulary: pass ``--clip-tokenizer DIR`` (a folder with CLIP's ``vocab.json`` + ``merges.txt``), or
have ``openai/clip-vit-large-patch14`` in the local Hugging Face cache (A1111 images and most GPU boxes
do; only the cache is read, never the network); a real checkpoint without either is refused instead of
producing silent garbage.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from transformers import CLIPTokenizer

BYTE_LEVEL_VOCAB_SIZE = 514
#: The repository whose tokenizer SD1.x and SDXL use (SDXL's second tokenizer shares its vocabulary).
CLIP_REPO = "openai/clip-vit-large-patch14"
CLIP_MAX_LENGTH = 77


@cache
def _bytes_to_unicode() -> tuple[str, ...]:
    """CLIP/GPT-2's reversible byte → printable-character table, in byte order of the vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return tuple(chr(c) for c in codes)


def write_byte_level_vocab(folder: Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` of the byte-level CLIP vocabulary into ``folder``."""
    chars = _bytes_to_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def load_clip_tokenizer(folder: Path, pad_token: str | None = None) -> CLIPTokenizer:
    """Load a CLIP tokenizer from a folder holding ``vocab.json`` and ``merges.txt`` (no network)."""
    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CLIP_MAX_LENGTH, **kwargs
    )


def cached_clip_tokenizer_dir(cache_dir: Path | None = None) -> Path | None:
    """The folder of a locally cached CLIP-L tokenizer (``vocab.json`` + ``merges.txt``), if any.

    Reads the Hugging Face cache only (``try_to_load_from_cache`` makes no request).
    """
    found = []
    for name in ("vocab.json", "merges.txt"):
        path = try_to_load_from_cache(CLIP_REPO, name, cache_dir=cache_dir)
        if not isinstance(path, str):
            return None
        found.append(Path(path).parent)
    return found[0] if found[0] == found[1] else None
