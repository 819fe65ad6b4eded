"""A1111's text → token chunks: ``(emphasis:1.2)``, ``BREAK``, 75-token chunks, comma backtrack, embeddings.

One :class:`TokenChunker` per text encoder (SDXL has two, tokenized differently: ``tokenizer.py``), as
A1111's ``sd_hijack_clip`` does: the prompt is never truncated; each chunk is 75 tokens between a start
and an end token; a chunk that fills up within ``comma_padding_backtrack`` tokens of a comma moves the
words after that comma on to the next chunk; a textual-inversion embedding is never split. The
``emphasis`` option ``None`` turns the bracket syntax (and ``BREAK``) off: the text is tokenized as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .options import EMPHASIS_MODES
from .prompt_syntax import PromptSyntaxError
from .tokenizer import ClipTokenizer

CHUNK = 75
_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111's ``parse_prompt_attention``: ``(a)`` times 1.1, ``[a]`` divided by 1.1, ``(a:w)``, escapes;
    ``BREAK`` becomes ``("BREAK", -1)``.

    Raises :class:`PromptSyntaxError` for a weight that is not a number, e.g. ``(a:1.2.3)`` (A1111: HTTP 500).
    """
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
            try:
                factor = float(weight)
            except ValueError:
                raise PromptSyntaxError(f"emphasis weight {weight!r} in {text!r} is not a number") from None
            multiply(round_brackets.pop(), factor)
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
    """77 token ids (start, 75, end), their multipliers, and embeddings at offsets counted after the start."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)


class EmbeddingLookup:
    """Embedding names as token-id sequences, longest first per first id (A1111's ``ids_lookup``).

    A1111 tokenizes the names with the first (CLIP-L) tokenizer and matches those ids in every encoder's
    token stream, SDXL's CLIP-G included.
    """

    def __init__(self, tokenizer: ClipTokenizer, embeddings: dict[str, Embedding]):
        self.by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for name, emb in embeddings.items():
            ids = tokenizer(name)
            if ids:
                self.by_first.setdefault(ids[0], []).append((ids, emb))
        for candidates in self.by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))

    def at(self, tokens: list[int], pos: int) -> tuple[Embedding, int] | None:
        for ids, emb in self.by_first.get(tokens[pos], []):
            if tokens[pos : pos + len(ids)] == ids:
                return emb, len(ids)
        return None


class TokenChunker:
    """One text encoder's view of a prompt: A1111's ``tokenize_line``."""

    def __init__(
        self, tokenizer: ClipTokenizer, lookup: EmbeddingLookup, comma_backtrack: int, parse_emphasis: bool
    ):
        self.tokenizer = tokenizer
        self.lookup = lookup
        self.backtrack = comma_backtrack
        self.parse_emphasis = parse_emphasis

    def empty_chunk(self) -> Chunk:
        start, end = self.tokenizer.start, self.tokenizer.end
        return Chunk([start] + [end] * (CHUNK + 1), [1.0] * (CHUNK + 2))

    def model_input(self, chunk: Chunk) -> list[int]:
        """The ids the encoder sees: for open_clip, 0 after the first end token (A1111's ``id_pad``)."""
        tokens, pad = chunk.tokens, self.tokenizer.pad
        if pad == self.tokenizer.end:
            return tokens
        end = tokens.index(self.tokenizer.end)
        return tokens[: end + 1] + [pad] * (len(tokens) - end - 1)

    def chunks(self, text: str) -> tuple[list[Chunk], int, list[str]]:
        """The chunks, the token count (as A1111's counter shows it) and the embedding names used."""
        parsed = parse_attention(text) if self.parse_emphasis else [(text, 1.0)]
        start, end = self.tokenizer.start, self.tokenizer.end
        chunks: list[Chunk] = []
        chunk = Chunk()
        token_count = 0
        last_comma = -1
        used: list[str] = []

        def next_chunk(is_last: bool = False) -> None:
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else CHUNK
            pad = CHUNK - len(chunk.tokens)
            chunk.tokens = [start, *chunk.tokens, *[end] * pad, end]
            chunk.weights = [1.0, *chunk.weights, *[1.0] * pad, 1.0]
            chunks.append(chunk)
            chunk = Chunk()
            last_comma = -1

        for piece, weight in parsed:
            if piece == "BREAK" and weight == -1:
                next_chunk()
                continue
            tokens = self.tokenizer(piece)
            pos = 0
            while pos < len(tokens):
                token = tokens[pos]
                if token == self.tokenizer.comma:
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
                found = self.lookup.at(tokens, pos)
                if found is None:
                    chunk.tokens.append(token)
                    chunk.weights.append(weight)
                    pos += 1
                    continue
                emb, length = found
                if len(chunk.tokens) + emb.count > CHUNK:
                    next_chunk()
                # Placeholder id 0 (as A1111); the token-embedding hook writes the vectors over it.
                chunk.fixes.append((len(chunk.tokens), emb))
                chunk.tokens += [0] * emb.count
                chunk.weights += [weight] * emb.count
                used.append(emb.name)
                pos += length
        if chunk.tokens or not chunks:
            next_chunk(is_last=True)
        return chunks, token_count, used

    def batches(self, texts: Sequence[str]) -> tuple[list[list[Chunk]], list[str]]:
        """Chunk ``texts`` (one prompt's schedule) together, as A1111 encodes them in one batch.

        Returns, for each chunk position, one chunk per text (texts with fewer chunks get empty ones), and
        the embedding names used.
        """
        per_text: dict[str, list[Chunk]] = {}
        used: list[str] = []
        for text in texts:
            if text not in per_text:
                per_text[text], _, names = self.chunks(text)
                used += names
        count = max(len(chunks) for chunks in per_text.values())
        rows = [per_text[t] for t in texts]
        return [[c[i] if i < len(c) else self.empty_chunk() for c in rows] for i in range(count)], used


class PromptChunker:
    """The token chunkers of every text encoder of a model (SD1.5: CLIP-L; SDXL: CLIP-L, then CLIP-G)."""

    def __init__(
        self,
        tokenizers: Sequence[ClipTokenizer],
        embeddings: dict[str, Embedding],
        comma_backtrack: int = 20,
        emphasis: str = "Original",
    ):
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis {emphasis!r} is not one of {', '.join(EMPHASIS_MODES)}")
        lookup = EmbeddingLookup(tokenizers[0], embeddings)
        self.emphasis = emphasis
        self.encoders = [
            TokenChunker(tok, lookup, comma_backtrack, parse_emphasis=emphasis != "None")
            for tok in tokenizers
        ]


@contextmanager
def embedding_fixes(
    token_embedding: torch.nn.Module, fixes: list[list[tuple[int, torch.Tensor]]]
) -> Iterator[None]:
    """Write embedding vectors over placeholder rows of the token embeddings (A1111's EmbeddingsWithFixes).

    ``fixes[row]`` holds ``(offset, vectors)`` with offsets counted after the start token.
    """

    def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        for row, row_fixes in enumerate(fixes):
            for offset, vectors in row_fixes:
                out[row, offset + 1 : offset + 1 + vectors.shape[0]] = vectors.to(out.dtype)
        return out

    handle = token_embedding.register_forward_hook(hook) if any(fixes) else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
