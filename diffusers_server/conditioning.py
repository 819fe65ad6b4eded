"""Prompt → text-encoder embeddings, A1111-style, for SD1.5 and SDXL pipelines.

SD1.x: clip skip N uses ``last_hidden_state`` for N=1, else ``final_layer_norm(hidden_states[-N])``.
SDXL (A1111 default ``sdxl_clip_l_skip=False``): both encoders use the penultimate layer, without final norm;
clip skip reaches the CLIP-L encoder only when ``sdxl_clip_l_skip`` is on.
The pooled SDXL vector comes from the first chunk's EOS token, as in A1111.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .cond_schedule import BatchConds, ComposedCond, Cond, ScheduledCond
from .models.pipelines import LoadedModel
from .prompts import Chunk, PromptChunker, embedding_fixes, emphasize


@dataclass(frozen=True)
class EncodeSettings:
    clip_stop: int
    sdxl_clip_l_skip: bool
    emphasis: bool


def _token_embedding(te: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(te, "text_model", te)
    return inner.embeddings.token_embedding  # type: ignore[no-any-return]


def _encode_chunk(
    model: LoadedModel, index: int, chunk: Chunk, settings: EncodeSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    te = model.pipe.text_encoder if index == 0 else model.pipe.text_encoder_2
    device = te.device
    ids = torch.tensor([chunk.tokens], device=device)
    width = model.text_widths[index]
    fixes = [(offset, emb.vectors[width].to(device)) for offset, emb in chunk.fixes]
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
        eos = chunk.tokens.index(model.pipe.tokenizer.eos_token_id, 1)
        pooled = te.text_projection(out.last_hidden_state[:, eos])
    if settings.emphasis:
        z = emphasize(z, torch.tensor(chunk.weights, device=device))
    return z, pooled


def encode(
    model: LoadedModel, chunks: list[Chunk], settings: EncodeSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode chunks (already padded to the common count) into ``(prompt_embeds, pooled or None)``."""
    per_encoder: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for index in range(len(model.text_widths)):
        parts = []
        for n, chunk in enumerate(chunks):
            z, p = _encode_chunk(model, index, chunk, settings)
            parts.append(z)
            if n == 0 and p is not None:
                pooled = p
        per_encoder.append(torch.cat(parts, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


def pipeline_kwargs(
    model: LoadedModel, chunker: PromptChunker, prompt: str, negative: str, settings: EncodeSettings
) -> tuple[dict[str, Any], list[str]]:
    """Embeddings for the pipeline call (both prompts padded to the same chunk count) + embeddings used."""
    pos, _, used_pos = chunker.chunks(prompt)
    neg, _, used_neg = chunker.chunks(negative)
    empty = chunker.chunks("")[0][0]
    while len(pos) < len(neg):
        pos.append(empty)
    while len(neg) < len(pos):
        neg.append(empty)
    with torch.no_grad():
        pe, pp = encode(model, pos, settings)
        ne, npool = encode(model, neg, settings)
    kwargs: dict[str, Any] = {"prompt_embeds": pe, "negative_prompt_embeds": ne}
    if model.kind == "sdxl":
        kwargs |= {"pooled_prompt_embeds": pp, "negative_pooled_prompt_embeds": npool}
    return kwargs, sorted(set(used_pos + used_neg))


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
    """Each image's prompt and negative (extra-network tags already removed) as sampler conditioning.

    Returns the conditioning and the sorted names of the embeddings used. ``steps`` is the pass's step
    count, which prompt-editing schedules are measured in; for a hires pass ``steps`` is the first pass's
    count and ``hires_steps`` the second pass's (A1111's ``get_learned_conditioning_prompt_schedules``).
    """
    del steps, hires_steps  # every prompt is one constant encoding until prompt editing is parsed
    positive: list[ComposedCond] = []
    negative: list[ScheduledCond] = []
    used: set[str] = set()
    for prompt, neg in zip(prompts, negatives, strict=True):
        kwargs, names = pipeline_kwargs(model, chunker, prompt, neg, settings)
        used.update(names)
        pos_cond = Cond(kwargs["prompt_embeds"][0], _first(kwargs.get("pooled_prompt_embeds")))
        neg_pooled = _first(kwargs.get("negative_pooled_prompt_embeds"))
        neg_cond = Cond(kwargs["negative_prompt_embeds"][0], neg_pooled)
        positive.append(ComposedCond(((ScheduledCond.constant(pos_cond), 1.0),)))
        negative.append(ScheduledCond.constant(neg_cond))
    return BatchConds(tuple(positive), tuple(negative)), sorted(used)


def _first(batch: torch.Tensor | None) -> torch.Tensor | None:
    return None if batch is None else batch[0]
