"""A1111's CFG denoiser on ``build_conds`` output: schedules per model call, weighted AND parts, padding.

The inner model here is a probe, not a UNet: each row's prediction is the mean of the context it was given,
so the combined output shows exactly which encodings the denoiser picked and how it weighted them.
"""

from __future__ import annotations

import torch

from diffusers_server.cond_schedule import BatchConds, ComposedCond, Cond, ScheduledCond
from diffusers_server.sampling.denoiser import CFGDenoiser, CondBatch

SHAPE = (1, 4, 2, 2)


def cond(value: float, tokens: int = 77, last: float | None = None) -> Cond:
    context = torch.full((tokens, 8), value)
    if last is not None:
        context[-1] = last
    return Cond(context)


class Probe:
    """Records each call's contexts; predicts, for every row, the mean of that row's context."""

    def __init__(self) -> None:
        self.contexts: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, batch: CondBatch) -> torch.Tensor:
        self.contexts.append(batch.context.clone())
        means = batch.context.mean(dim=(1, 2))
        return means[:, None, None, None].expand(x.shape[0], *x.shape[1:]).clone()


def denoiser(conds: BatchConds, scale: float = 1.0) -> tuple[CFGDenoiser, Probe]:
    probe = Probe()
    return CFGDenoiser(probe, conds, scale, total_steps=4, should_stop=lambda: False), probe


def call(den: CFGDenoiser) -> float:
    out = den(torch.zeros(SHAPE), torch.ones(SHAPE[0]))
    return float(out.mean())


def test_schedule_entry_follows_the_model_call_count_and_falls_back_to_the_first() -> None:
    schedule = ScheduledCond(((1, cond(1.0)), (3, cond(2.0))))
    den, _ = denoiser(BatchConds((ComposedCond(((schedule, 1.0),)),), (ScheduledCond.constant(cond(0.0)),)))
    # calls 0-1: first entry, 2-3: second; past the last end_at_step A1111 takes the first entry again
    assert [call(den) for _ in range(5)] == [1.0, 1.0, 2.0, 2.0, 1.0]


def test_and_parts_are_combined_with_their_weights_times_the_cfg_scale() -> None:
    parts = ((ScheduledCond.constant(cond(1.0)), 0.5), (ScheduledCond.constant(cond(3.0)), 2.0))
    den, probe = denoiser(BatchConds((ComposedCond(parts),), (ScheduledCond.constant(cond(1.0)),)), scale=7)
    # uncond + scale * sum(weight * (part - uncond)) = 1 + 7 * (0.5 * 0 + 2 * 2)
    assert call(den) == 29.0
    assert probe.contexts[0].shape[0] == 3  # both parts and the negative in one UNet batch


def test_parts_of_different_lengths_are_padded_with_their_last_token_vector() -> None:
    short = ScheduledCond.constant(cond(1.0, last=4.0))
    long = ScheduledCond.constant(cond(2.0, tokens=154))
    den, probe = denoiser(BatchConds((ComposedCond(((short, 1.0), (long, 1.0))),), (long,)))
    call(den)
    stacked = probe.contexts[0]
    assert stacked.shape[:2] == (3, 154)
    assert bool((stacked[0, 76:] == 4.0).all()) and bool((stacked[0, :76] == 1.0).all())


def test_negative_of_another_length_runs_as_its_own_pass_unpadded() -> None:
    den, probe = denoiser(
        BatchConds(
            (ComposedCond(((ScheduledCond.constant(cond(3.0)), 1.0),)),),
            (ScheduledCond.constant(cond(1.0, tokens=154)),),
        ),
        scale=2,
    )
    assert call(den) == 1.0 + 2 * (3.0 - 1.0)
    assert [c.shape[:2] for c in probe.contexts] == [(1, 77), (1, 154)]


class ImageProbe:
    """Predicts, for every row, the context's mean plus 10 times the image conditioning's mean."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, batch: CondBatch) -> torch.Tensor:
        assert batch.image is not None and batch.image.shape[0] == x.shape[0]
        self.images.append(batch.image.clone())
        means = batch.context.mean(dim=(1, 2)) + 10 * batch.image.mean(dim=(1, 2, 3))
        return means[:, None, None, None].expand(x.shape[0], *x.shape[1:]).clone()


def image_denoiser(image_cfg_scale: float | None) -> tuple[CFGDenoiser, ImageProbe]:
    conds = BatchConds(
        (ComposedCond(((ScheduledCond.constant(cond(3.0)), 1.0),)),), (ScheduledCond.constant(cond(1.0)),)
    )
    probe = ImageProbe()
    den = CFGDenoiser(probe, conds, 7.0, total_steps=4, should_stop=lambda: False)
    den.image_cond, den.image_cfg_scale = torch.full((1, 4, 2, 2), 0.5), image_cfg_scale
    return den, probe


def test_the_image_conditioning_goes_with_the_prompt_and_the_negative_alike() -> None:
    den, probe = image_denoiser(None)
    # uncond (1 + 5) + 7 * (prompt (3 + 5) - uncond (1 + 5)): the image cancels out of the guidance
    assert call(den) == 20.0
    assert [float(row.mean()) for row in probe.images[0]] == [0.5, 0.5]


def test_instruct_pix2pix_guidance_is_a1111s_three_way_combination() -> None:
    den, probe = image_denoiser(1.5)
    # rows: prompt + image (8), negative + image (6), negative + zeros (1);
    # uncond + cfg * (cond - image) + image_cfg * (image - uncond) = 1 + 7 * 2 + 1.5 * 5
    assert call(den) == 22.5
    assert [float(row.mean()) for row in probe.images[0]] == [0.5, 0.5, 0.0]
