"""CLIP tokenizers that work offline.

The real CLIP BPE vocabulary (49408 tokens) ships with no installed package and the Hugging Face hub is off
limits, so the engine builds a *byte-level* CLIP vocabulary in code: every byte is one token, with and without
CLIP's ``</w>`` end-of-word marker, plus ``<|startoftext|>``/``<|endoftext|>`` (514 tokens, no merges). The
tiny demo models are trained against nothing, so any consistent vocabulary serves them. Real checkpoints need
the real vocabulary: pass ``--clip-tokenizer DIR`` (a folder with CLIP's ``vocab.json`` + ``merges.txt``);
a real checkpoint without it is refused instead of producing silent garbage.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer

BYTE_LEVEL_VOCAB_SIZE = 514
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
