"""The conditioning a sampler consumes, in the shape A1111 gives its samplers.

A1111 turns each prompt into a *schedule* of encodings (prompt editing ``[a:b:0.5]`` and alternation
``[a|b]`` switch the text at given steps) and the positive prompt into a weighted list of such schedules
(``a AND b:0.5``, composable diffusion). The sampler's CFG denoiser asks, at every model call, which encoding
is active (``ScheduledCond.at``) and combines the parts' predictions with their weights.

A plain prompt is one part of weight 1 with one entry that lasts for every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Cond:
    """One text encoding: the cross-attention context and, for SDXL, the pooled text embedding."""

    context: torch.Tensor  # [tokens, width]; tokens is a multiple of 77
    pooled: torch.Tensor | None = None  # [pooled width] (SDXL), else None


@dataclass(frozen=True)
class ScheduledCond:
    """A1111's ``list[ScheduledPromptConditioning]``: entry *i* is used while ``step <= end_at_step``."""

    entries: tuple[tuple[int, Cond], ...]

    def at(self, step: int) -> Cond:
        """The encoding active at ``step`` (A1111's ``reconstruct_cond_batch`` rule: the first entry whose
        ``end_at_step`` is not passed; past the last one, A1111 falls back to the first entry)."""
        for end_at_step, cond in self.entries:
            if step <= end_at_step:
                return cond
        return self.entries[0][1]

    @classmethod
    def constant(cls, cond: Cond) -> ScheduledCond:
        return cls(((0x7FFFFFFF, cond),))


@dataclass(frozen=True)
class ComposedCond:
    """A positive prompt: its ``AND`` parts, each a schedule with its weight (one part of 1.0 without AND)."""

    parts: tuple[tuple[ScheduledCond, float], ...]


@dataclass(frozen=True)
class BatchConds:
    """Everything one sampling pass needs: one positive and one negative per image of the batch."""

    positive: tuple[ComposedCond, ...]
    negative: tuple[ScheduledCond, ...]

    def __post_init__(self) -> None:
        if len(self.positive) != len(self.negative):
            raise ValueError("BatchConds needs one negative per positive")
