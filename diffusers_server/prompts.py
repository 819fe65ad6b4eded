"""A1111 prompt handling: extra-network tags, ``(emphasis:1.2)``, ``BREAK``, 75-token chunks, embeddings.

The pipeline's own prompt encoding truncates at 77 tokens, applies clip skip to the positive prompt
only and is broken for ``clip_skip`` with transformers >= 5.6, so prompts are encoded here, the way A1111's
``sd_hijack_clip`` does: never truncated, both prompts with the same clip skip, padded to equal length.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import CLIPTokenizer

CHUNK = 75
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_COMMENT = re.compile(r"\s*#[^\n]*")
# A1111 scheduling syntax this engine does not implement: [from:to:when], [to:when], [a|b], "a AND b".
_UNSUPPORTED_SYNTAX = (
    (
        re.compile(r"\[[^\[\]]*:[^\[\]]*:\s*[\d.]+\s*]|\[[^\[\]:]+:\s*[\d.]+\s*]"),
        "prompt editing [from:to:when]",
    ),
    (re.compile(r"\[[^\[\]]*\|[^\[\]]*]"), "alternation [a|b]"),
    (re.compile(r"\sAND\s"), "composable diffusion AND"),
)


def unsupported_syntax(prompt: str) -> list[str]:
    """A1111 prompt features used in ``prompt`` that this engine would read as plain text."""
    return [name for pattern, name in _UNSUPPORTED_SYNTAX if pattern.search(prompt)]


@dataclass(frozen=True)
class NetworkTag:
    """One ``<kind:name:args>`` tag, e.g. ``<lora:foo:0.8>``."""

    kind: str
    name: str
    te_weight: float
    unet_weight: float


def strip_comments(prompt: str) -> str:
    """A1111's ``enable_prompt_comments``: ``#`` to end of line is removed."""
    return "\n".join(_COMMENT.sub("", line) for line in prompt.split("\n")) if "#" in prompt else prompt


def extract_networks(prompt: str) -> tuple[str, list[NetworkTag]]:
    """Remove extra-network tags from the text and return them (A1111 ``extra_networks.parse_prompt``)."""
    tags: list[NetworkTag] = []

    def take(match: re.Match[str]) -> str:
        kind = "lora" if match.group(1) == "lyco" else match.group(1)
        positional: list[str] = []
        named: dict[str, str] = {}
        name, *args = match.group(2).split(":")
        for arg in args:
            key, sep, value = arg.partition("=")
            if sep:
                named[key.strip()] = value
            else:
                positional.append(arg)
        try:
            te = float(named.get("te", positional[0] if positional else 1.0))
            unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
        except ValueError as exc:
            raise ValueError(f"bad weight in {match.group(0)!r}: {exc}") from exc
        tags.append(NetworkTag(kind, name, te, unet))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tags


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111's ``parse_prompt_attention``: ``(a)`` *1.1, ``[a]`` /1.1, ``(a:w)``; ``BREAK`` → -1."""
    res: list[list[object]] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] = float(item[1]) * factor  # type: ignore[arg-type]

    for m in _ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply(round_brackets.pop(), float(weight))
        elif piece == ")" and round_brackets:
            multiply(round_brackets.pop(), 1.1)
        elif piece == "]" and square_brackets:
            multiply(square_brackets.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    res.append(["BREAK", -1.0])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply(pos, 1.1)
    for pos in square_brackets:
        multiply(pos, 1 / 1.1)
    if not res:
        return [("", 1.0)]
    merged: list[list[object]] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] = str(merged[-1][0]) + str(item[0])
        else:
            merged.append(item)
    return [(str(t), float(w)) for t, w in merged]  # type: ignore[arg-type]


@dataclass(frozen=True)
class Embedding:
    """A textual-inversion embedding: one vector block per text encoder width."""

    name: str
    vectors: dict[int, torch.Tensor]

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)


class PromptChunker:
    """Splits a prompt into A1111's 75-token chunks (comma backtracking, ``BREAK``, embeddings kept whole)."""

    def __init__(self, tokenizer: CLIPTokenizer, embeddings: dict[str, Embedding], comma_backtrack: int = 20):
        self.tokenizer = tokenizer
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        self.comma = int(tokenizer.convert_tokens_to_ids(",</w>"))
        self.backtrack = comma_backtrack
        self.lookup: dict[int, list[tuple[list[int], Embedding]]] = {}
        for name, emb in embeddings.items():
            ids = tokenizer(name, add_special_tokens=False).input_ids
            if ids:
                self.lookup.setdefault(ids[0], []).append((ids, emb))
        for candidates in self.lookup.values():
            candidates.sort(key=lambda c: -len(c[0]))

    def _embedding_at(self, tokens: list[int], pos: int) -> tuple[Embedding, int] | None:
        for ids, emb in self.lookup.get(tokens[pos], []):
            if tokens[pos : pos + len(ids)] == ids:
                return emb, len(ids)
        return None

    def chunks(self, text: str) -> tuple[list[Chunk], int, list[str]]:
        """Return the chunks (each 77 tokens with BOS/EOS), the token count and the embedding names used."""
        parsed = parse_attention(text)
        tokenized = self.tokenizer([t for t, _ in parsed], add_special_tokens=False).input_ids
        chunks: list[Chunk] = []
        chunk = Chunk()
        token_count = 0
        last_comma = -1
        used: list[str] = []

        def next_chunk(is_last: bool = False) -> None:
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else CHUNK
            pad = CHUNK - len(chunk.tokens)
            chunk.tokens = [self.bos, *chunk.tokens, *[self.eos] * pad, self.eos]
            chunk.weights = [1.0, *chunk.weights, *[1.0] * pad, 1.0]
            chunks.append(chunk)
            chunk = Chunk()
            last_comma = -1

        for tokens, (piece, weight) in zip(tokenized, parsed, strict=True):
            if piece == "BREAK" and weight == -1:
                next_chunk()
                continue
            pos = 0
            while pos < len(tokens):
                token = tokens[pos]
                if token == self.comma:
                    last_comma = len(chunk.tokens)
                elif (
                    self.backtrack
                    and len(chunk.tokens) == CHUNK
                    and last_comma != -1
                    and len(chunk.tokens) - last_comma <= self.backtrack
                ):
                    cut = last_comma + 1
                    moved = chunk.tokens[cut:], chunk.weights[cut:]
                    chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                    next_chunk()
                    chunk.tokens, chunk.weights = list(moved[0]), list(moved[1])
                if len(chunk.tokens) == CHUNK:
                    next_chunk()
                found = self._embedding_at(tokens, pos)
                if found is None:
                    chunk.tokens.append(token)
                    chunk.weights.append(weight)
                    pos += 1
                    continue
                emb, length = found
                if len(chunk.tokens) + emb.count > CHUNK:
                    next_chunk()
                # Placeholder id 0 (as A1111); the token-embedding hook writes the vectors over it.
                chunk.fixes.append((len(chunk.tokens) + 1, emb))
                chunk.tokens += [0] * emb.count
                chunk.weights += [weight] * emb.count
                used.append(emb.name)
                pos += length
        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count, used


@contextmanager
def embedding_fixes(
    token_embedding: torch.nn.Module, fixes: list[tuple[int, torch.Tensor]]
) -> Iterator[None]:
    """Write embedding vectors over placeholder rows of the token embeddings (A1111's EmbeddingsWithFixes)."""

    def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        for offset, vectors in fixes:
            out[0, offset : offset + vectors.shape[0]] = vectors.to(out.dtype)
        return out

    handle = token_embedding.register_forward_hook(hook) if fixes else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: scale by weights, then restore the chunk's mean.

    All-1.0 weights are a no-op in A1111 too; skipping them avoids 0/0 when a chunk's mean is exactly zero.
    """
    if bool((weights == 1.0).all()):
        return z
    original_mean = z.mean()
    z = z * weights.reshape(1, -1, 1).to(z.dtype)
    new_mean = z.mean()
    return z * (original_mean / new_mean) if new_mean.abs() > 1e-12 else z
