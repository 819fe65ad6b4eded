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
    parser = _AttentionParser(text)
    for m in _ATTENTION.finditer(text):
        parser.feed(m.group(0), m.group(1))
    return parser.finish()


class _AttentionParser:
    """The pieces read so far with their weights, and where each open bracket started."""

    def __init__(self, text: str):
        self.text = text
        self.res: list[tuple[str, float]] = []
        self.round_brackets: list[int] = []
        self.square_brackets: list[int] = []

    def multiply(self, start: int, factor: float) -> None:
        self.res[start:] = [(piece, weight * factor) for piece, weight in self.res[start:]]

    def feed(self, piece: str, weight: str | None) -> None:
        if piece.startswith("\\"):
            self.res.append((piece[1:], 1.0))
        elif piece == "(":
            self.round_brackets.append(len(self.res))
        elif piece == "[":
            self.square_brackets.append(len(self.res))
        elif weight is not None and self.round_brackets:
            try:
                factor = float(weight)
            except ValueError:
                raise PromptSyntaxError(
                    f"emphasis weight {weight!r} in {self.text!r} is not a number"
                ) from None
            self.multiply(self.round_brackets.pop(), factor)
        elif piece == ")" and self.round_brackets:
            self.multiply(self.round_brackets.pop(), 1.1)
        elif piece == "]" and self.square_brackets:
            self.multiply(self.square_brackets.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    self.res.append(("BREAK", -1.0))
                self.res.append((part, 1.0))

    def finish(self) -> list[tuple[str, float]]:
        """Close the brackets left open, then merge neighbours of equal weight."""
        for pos in self.round_brackets:
            self.multiply(pos, 1.1)
        for pos in self.square_brackets:
            self.multiply(pos, 1 / 1.1)
        if not self.res:
            return [("", 1.0)]
        merged = [self.res[0]]
        for piece, weight in self.res[1:]:
            if weight == merged[-1][1]:
                merged[-1] = (merged[-1][0] + piece, weight)
            else:
                merged.append((piece, weight))
        return merged


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


class _ChunkBuilder:
    """Fills 75-token chunks; a full chunk moves the words after its last comma to the next one (when the
    comma is within ``backtrack`` tokens of the end), as A1111's ``tokenize_line`` does."""

    def __init__(self, start: int, end: int, backtrack: int):
        self.start, self.end, self.backtrack = start, end, backtrack
        self.chunks: list[Chunk] = []
        self.chunk = Chunk()
        self.token_count = 0
        self.last_comma = -1

    def close(self, is_last: bool = False) -> None:
        """Pad the current chunk to 75 tokens, wrap it in start/end and begin a new one."""
        chunk = self.chunk
        self.token_count += len(chunk.tokens) if is_last else CHUNK
        pad = CHUNK - len(chunk.tokens)
        chunk.tokens = [self.start, *chunk.tokens, *[self.end] * pad, self.end]
        chunk.weights = [1.0, *chunk.weights, *[1.0] * pad, 1.0]
        self.chunks.append(chunk)
        self.chunk = Chunk()
        self.last_comma = -1

    def make_room(self, is_comma: bool) -> None:
        """Before the next token: remember a comma, or break a full chunk (at its last comma if near)."""
        chunk = self.chunk
        if is_comma:
            self.last_comma = len(chunk.tokens)
        elif (
            self.backtrack
            and len(chunk.tokens) == CHUNK
            and self.last_comma != -1
            and len(chunk.tokens) - self.last_comma <= self.backtrack
        ):
            cut = self.last_comma + 1
            moved = chunk.tokens[cut:], chunk.weights[cut:]
            chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
            self.close()
            self.chunk.tokens, self.chunk.weights = list(moved[0]), list(moved[1])
        if len(self.chunk.tokens) == CHUNK:
            self.close()

    def add_token(self, token: int, weight: float) -> None:
        self.chunk.tokens.append(token)
        self.chunk.weights.append(weight)

    def add_embedding(self, emb: Embedding, weight: float) -> None:
        """An embedding's vectors stay in one chunk: a chunk without room for them is closed first."""
        if len(self.chunk.tokens) + emb.count > CHUNK:
            self.close()
        # Placeholder id 0 (as A1111); the token-embedding hook writes the vectors over it.
        self.chunk.fixes.append((len(self.chunk.tokens), emb))
        self.chunk.tokens += [0] * emb.count
        self.chunk.weights += [weight] * emb.count


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
        builder = _ChunkBuilder(self.tokenizer.start, self.tokenizer.end, self.backtrack)
        used: list[str] = []
        for piece, weight in parsed:
            if piece == "BREAK" and weight == -1:
                builder.close()
                continue
            tokens = self.tokenizer(piece)
            pos = 0
            while pos < len(tokens):
                builder.make_room(is_comma=tokens[pos] == self.tokenizer.comma)
                found = self.lookup.at(tokens, pos)
                if found is None:
                    builder.add_token(tokens[pos], weight)
                    pos += 1
                    continue
                emb, length = found
                builder.add_embedding(emb, weight)
                used.append(emb.name)
                pos += length
        if builder.chunk.tokens or not builder.chunks:
            builder.close(is_last=True)
        return builder.chunks, builder.token_count, used

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
