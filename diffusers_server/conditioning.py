"""Prompts → the sampler's conditioning (``cond_schedule``), as A1111 v1.10.1 computes it, SD1.5 and SDXL.

For each image: the positive prompt's ``AND`` parts (with weights), each a schedule of encodings over the
steps (prompt editing, alternation), and the negative prompt's schedule. Prompt and negative are encoded
separately and *not* padded to each other (A1111's default ``pad_cond_uncond`` off). The texts of one
schedule are encoded as one batch, as A1111 does: shorter ones are padded with empty chunks, and the
"Original" emphasis restores the mean over that whole batch.

Encoders: SD1.x with clip skip N uses ``last_hidden_state`` for N=1, else
``final_layer_norm(hidden_states[-N])``.
SDXL (A1111 default ``sdxl_clip_l_skip=False``): both encoders use the penultimate layer, without final norm;
clip skip reaches the CLIP-L encoder only when ``sdxl_clip_l_skip`` is on. The pooled SDXL vector comes
from the first chunk's first end token (CLIP-G); an SDXL negative prompt that is empty at every step is
all zeros (A1111's ``force_zero_embeddings``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .cond_schedule import BatchConds, ComposedCond, Cond, ScheduledCond
from .models.pipelines import LoadedModel, text_encoders
from .prompt_syntax import PromptSyntaxError, prompt_schedule, split_and
from .prompts import Chunk, PromptChunker, TokenChunker, embedding_fixes


@dataclass(frozen=True)
class EncodeSettings:
    clip_stop: int
    sdxl_clip_l_skip: bool
    #: A1111's ``emphasis`` option: ``Original``, ``No norm``, ``Ignore`` or ``None`` (see ``prompts.py``).
    emphasis: str = "Original"
    #: A1111's ``use_old_scheduling`` (prompt-editing step arithmetic before v1.6).
    old_scheduling: bool = False


def zeroed_negative(kind: str, texts: Sequence[str], *, negative: bool) -> bool:
    """SDXL zeroes the text conditioning of a negative prompt whose every schedule text is empty."""
    return kind == "sdxl" and negative and all(text == "" for text in texts)


def _token_embedding(te: torch.nn.Module) -> torch.nn.Module:
    inner: Any = getattr(te, "text_model", te)
    embedding: torch.nn.Module = inner.embeddings.token_embedding
    return embedding


def _encode_rows(
    model: LoadedModel, index: int, chunker: TokenChunker, rows: list[Chunk], settings: EncodeSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk position of a batch through text encoder ``index``: ``([rows, 77, width], pooled)``."""
    te = text_encoders(model.pipe, model.kind)[index]
    device = te.device
    ids = torch.tensor([chunker.model_input(chunk) for chunk in rows], device=device)
    width = model.text_widths[index]
    fixes = [[(offset, emb.vectors[width].to(device)) for offset, emb in chunk.fixes] for chunk in rows]
    with embedding_fixes(_token_embedding(te), fixes):
        out = te(ids, output_hidden_states=True)
    pooled = None
    if model.kind == "sd15":
        if settings.clip_stop <= 1:
            z = out.last_hidden_state
        else:
            z = getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-settings.clip_stop])
    elif index == 0:
        z = out.hidden_states[-settings.clip_stop if settings.sdxl_clip_l_skip else -2]
    else:
        z = out.hidden_states[-2]
        ends = ids.argmax(dim=-1)  # the first end token: the largest id, with only padding 0 after it
        pooled = te.text_projection(out.last_hidden_state[torch.arange(len(rows)), ends])
    return z, pooled


def _emphasize(z: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, mode: str) -> torch.Tensor:
    """A1111's emphasis over a batch whose row ``i`` stands for ``counts[i]`` identical rows.

    ``Original`` scales by the multipliers, then restores the batch's mean (all rows of the schedule
    together); ``No norm`` only scales; ``Ignore``/``None`` leave ``z`` alone. All-1.0 multipliers are a
    no-op in A1111 too; skipping them avoids 0/0 when a mean is exactly zero.
    """
    if mode in ("Ignore", "None") or bool((weights == 1.0).all()):
        return z
    scaled = z * weights.to(z.dtype).unsqueeze(-1)
    if mode == "No norm":
        return scaled
    share = (counts / counts.sum()).to(z.dtype)
    original_mean = (z.mean(dim=(1, 2)) * share).sum()
    new_mean = (scaled.mean(dim=(1, 2)) * share).sum()
    return scaled * (original_mean / new_mean)


def encode_texts(
    model: LoadedModel,
    chunker: PromptChunker,
    texts: Sequence[str],
    settings: EncodeSettings,
    *,
    negative: bool = False,
) -> tuple[list[Cond], list[str]]:
    """Encode one prompt's schedule texts together (A1111's batch); one :class:`Cond` per text, in order.

    Returns the encodings and the embedding names used. Raises :class:`PromptSyntaxError` for a prompt
    A1111 cannot encode either.
    """
    counts = Counter(texts)
    unique = list(counts)
    multiplicity = torch.tensor([counts[t] for t in unique], dtype=torch.float64)
    contexts: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    used: list[str] = []
    chunk_counts = []
    with torch.no_grad():
        for index, encoder in enumerate(chunker.encoders):
            batches, names = encoder.batches(unique)
            used += names
            chunk_counts.append(len(batches))
            parts = []
            for position, rows in enumerate(batches):
                z, p = _encode_rows(model, index, encoder, rows, settings)
                weights = torch.tensor([row.weights for row in rows], device=z.device)
                parts.append(_emphasize(z, weights, multiplicity.to(z.device), chunker.emphasis))
                if position == 0 and p is not None:
                    pooled = p
            contexts.append(torch.cat(parts, dim=1))
    if len(set(chunk_counts)) > 1:
        raise PromptSyntaxError(
            f"the prompt tokenizes into {chunk_counts[0]} chunks for CLIP-L but {chunk_counts[1]} for CLIP-G "
            f"(A1111 fails on it too): {texts[0][:200]!r}"
        )
    context = torch.cat(contexts, dim=-1)
    if zeroed_negative(model.kind, texts, negative=negative):
        context = torch.zeros_like(context)
        pooled = None if pooled is None else torch.zeros_like(pooled)
    by_text = {text: Cond(context[i], None if pooled is None else pooled[i]) for i, text in enumerate(unique)}
    return [by_text[text] for text in texts], sorted(set(used))


def _scheduled(
    model: LoadedModel,
    chunker: PromptChunker,
    text: str,
    settings: EncodeSettings,
    steps: int,
    hires_steps: int | None,
    negative: bool,
) -> tuple[ScheduledCond, list[str]]:
    schedule = prompt_schedule(text, steps, hires_steps, settings.old_scheduling)
    conds, used = encode_texts(model, chunker, [t for _, t in schedule], settings, negative=negative)
    return ScheduledCond(tuple((end, cond) for (end, _), cond in zip(schedule, conds, strict=True))), used


def build_conds(
    model: LoadedModel,
    chunker: PromptChunker,
    prompts: list[str],
    negatives: list[str],
    settings: EncodeSettings,
    *,
    steps: int,
    hires_steps: int | None = None,
) -> tuple[BatchConds, list[str]]:
    """Each image's prompt (extra-network tags already removed) and negative (tags kept: A1111 encodes
    them as text) as sampler conditioning.

    ``steps`` is the pass's step count as A1111's prompt schedules count it: the sampler's *total* steps
    (doubled for second-order samplers: DPM++ SDE, DPM++ 2S a, Heun, DPM2, DPM2 a, Restart). For the hires
    pass give the first pass's total as ``steps`` and the hires pass's as ``hires_steps``. Identical prompts
    are encoded once. Returns the conditioning and the sorted names of the embeddings used.
    """
    positive: list[ComposedCond] = []
    negative: list[ScheduledCond] = []
    used: set[str] = set()
    schedules: dict[tuple[str, bool], ScheduledCond] = {}

    def schedule_of(text: str, is_negative: bool) -> ScheduledCond:
        key = (text, is_negative)
        if key not in schedules:
            schedules[key], names = _scheduled(
                model, chunker, text, settings, steps, hires_steps, is_negative
            )
            used.update(names)
        return schedules[key]

    composed: dict[str, ComposedCond] = {}
    for prompt, neg in zip(prompts, negatives, strict=True):
        if prompt not in composed:
            parts = split_and(prompt)
            composed[prompt] = ComposedCond(tuple((schedule_of(t, False), w) for t, w in parts))
        positive.append(composed[prompt])
        negative.append(schedule_of(neg, True))
    return BatchConds(tuple(positive), tuple(negative)), sorted(used)
