"""The model as samplers see it: the UNet with its noise scalings, and A1111's classifier-free guidance.

``UNetModel`` calls the diffusers UNet with a text context (and, for SDXL, the pooled text embedding plus
the size/crop "time ids"). ``EpsDenoiser`` turns it into k-diffusion's denoiser D(x, sigma) for an
epsilon-predicting model (input scaled by 1/sqrt(sigma^2 + 1), sigma mapped to a fractional timestep);
``LCMDenoiser`` adds LCM's boundary-condition scalings. ``CFGDenoiser`` is A1111's ``CFGDenoiser``: at
every model call it asks each prompt's schedule for the encoding active at its step counter (which counts
model calls, so second-order samplers advance it twice per step), runs the ``AND`` parts and the negative
prompt, and combines them with their weights times the CFG scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..cond_schedule import BatchConds, Cond
from .schedules import DiscreteSchedule, LCMSchedule
from .timestep_samplers import SamplingError


class Interrupted(Exception):
    """Raised inside a model call when the job was interrupted or skipped (A1111's InterruptedException)."""


@dataclass(frozen=True)
class CondBatch:
    """A stack of encodings for one model call: context ``[B, tokens, width]``, pooled ``[B, width]``, and
    each row's image conditioning (A1111's ``c_concat``: ``[B, 5, h, w]`` for an inpainting UNet, 4 channels
    for instruct-pix2pix)."""

    context: torch.Tensor
    pooled: torch.Tensor | None
    image: torch.Tensor | None = None

    def rows(self, a: int, b: int) -> CondBatch:
        return CondBatch(
            self.context[a:b],
            None if self.pooled is None else self.pooled[a:b],
            None if self.image is None else self.image[a:b],
        )


def stack_conds(conds: list[Cond]) -> CondBatch:
    """Stack encodings; shorter contexts are extended by repeating their last vector (A1111's
    ``stack_conds``, used when ``AND`` parts have different lengths)."""
    tokens = max(c.context.shape[0] for c in conds)
    contexts = []
    for c in conds:
        ctx = c.context
        if ctx.shape[0] != tokens:
            ctx = torch.vstack([ctx, ctx[-1:].repeat([tokens - ctx.shape[0], 1])])
        contexts.append(ctx)
    pooled = None
    if conds[0].pooled is not None:
        pooled = torch.stack([c.pooled for c in conds if c.pooled is not None])
    return CondBatch(torch.stack(contexts), pooled)


def _upsample_like_a1111(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
    """Forward pre-hook of a UNet up block: LDM's order for latents whose sides are not multiples of 8.

    LDM upsamples by 2 and convolves, and A1111 then resizes (nearest) to the skip connection's size where
    it concatenates; diffusers resizes straight to the skip's size before the convolution. The results
    differ at odd feature-map sizes (e.g. a 96x80 hires pass). Here the previous block's upsampler doubles
    (no ``upsample_size``) and this block resizes its input to its skips first, as A1111 does.
    """
    hidden, skips = kwargs["hidden_states"], kwargs["res_hidden_states_tuple"]
    size = skips[-1].shape[-2:]
    if hidden.shape[-2:] != size:
        kwargs["hidden_states"] = torch.nn.functional.interpolate(hidden, size=size, mode="nearest")
    kwargs["upsample_size"] = None
    return args, kwargs


def match_a1111_upsampling(unet: Any) -> None:
    """Install :func:`_upsample_like_a1111` on every up block of ``unet`` (once)."""
    if getattr(unet, "_a1111_upsampling", False):
        return
    for block in unet.up_blocks:
        block.register_forward_pre_hook(_upsample_like_a1111, with_kwargs=True)
    unet._a1111_upsampling = True


class UNetModel:
    """A1111's ``apply_model``: the UNet's epsilon prediction at (fractional) training timestep ``t``."""

    def __init__(self, unet: Any, sdxl: bool, time_ids: tuple[int, ...] = ()):
        match_a1111_upsampling(unet)
        self.unet = unet
        self.sdxl = sdxl
        self.time_ids = time_ids  # SDXL: (height, width, crop top, crop left, height, width)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: CondBatch) -> torch.Tensor:
        dtype = self.unet.dtype
        kwargs: dict[str, Any] = {}
        if self.sdxl:
            assert cond.pooled is not None, "SDXL conditioning needs the pooled text embedding"
            ids = torch.tensor([self.time_ids], dtype=dtype, device=x.device).repeat(x.shape[0], 1)
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(x.device, dtype), "time_ids": ids}
        if cond.image is not None:  # inpainting / instruct-pix2pix: the image conditioning after the latents
            x = torch.cat([x, cond.image.to(x.device, x.dtype)], dim=1)
        out = self.unet(
            x.to(dtype),
            t.to(x.device),
            encoder_hidden_states=cond.context.to(x.device, dtype),
            return_dict=False,
            **kwargs,
        )[0]
        return torch.as_tensor(out).float()


def _append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - v.ndim)]


class EpsDenoiser:
    """k-diffusion's D(x, sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma))."""

    def __init__(self, model: UNetModel, schedule: DiscreteSchedule):
        self.model = model
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: CondBatch) -> torch.Tensor:
        c_out = _append_dims(-sigma, x.ndim)
        c_in = _append_dims(1 / (sigma**2 + 1) ** 0.5, x.ndim)
        eps = self.model(x * c_in, self.schedule.sigma_to_t(sigma), cond)
        return x + eps * c_out


class LCMDenoiser(EpsDenoiser):
    """LCM: the epsilon denoiser on quantized timesteps, then the consistency-model boundary scalings."""

    schedule: LCMSchedule

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: CondBatch) -> torch.Tensor:
        denoised = super().__call__(x, sigma, cond)
        sigma_data = 0.5
        scaled = _append_dims(self.schedule.sigma_to_t(sigma), x.ndim) * 10.0
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
        return c_out * denoised + c_skip * x


class TimestepModel:
    """DDIM/PLMS/UniPC call the UNet directly with a timestep and work on its epsilon output."""

    def __init__(self, model: UNetModel):
        self.model = model

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: CondBatch) -> torch.Tensor:
        return self.model(x, t, cond)


Inner = Callable[[torch.Tensor, torch.Tensor, CondBatch], torch.Tensor]


@dataclass(frozen=True)
class LatentBlend:
    """Inpainting's latent mask: ``nmask`` (1 = repaint) keeps the prediction, ``mask`` the original."""

    init: torch.Tensor
    mask: torch.Tensor
    nmask: torch.Tensor

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.nmask + self.init * self.mask


@dataclass
class GuidanceOptions:
    """A1111 options and request fields that change the guidance (defaults = A1111's)."""

    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0
    batch_cond_uncond: bool = True
    extra_params: dict[str, Any] = field(default_factory=dict)


class CFGDenoiser:
    """A1111's ``CFGDenoiser.forward`` for one pass: prompt schedules, ``AND``, negative, CFG scale."""

    def __init__(
        self,
        inner: Inner,
        conds: BatchConds,
        cond_scale: float,
        total_steps: int,
        should_stop: Callable[[], bool],
        options: GuidanceOptions | None = None,
    ):
        self.inner = inner
        self.conds = conds
        self.cond_scale = cond_scale
        self.total_steps = max(total_steps, 1)
        self.should_stop = should_stop
        self.options = options or GuidanceOptions()
        self.step = 0
        self.cond_scale_multiplier = 1.0  # DDIM CFG++ scales its guidance down
        self.keep_last_uncond = False
        self.last_uncond: torch.Tensor | None = None
        self.last_latent: torch.Tensor | None = None
        # What an interrupted pass returns: the first prompt's prediction of the clean latent.
        self.pred_x0: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        # Inpainting: A1111 blends the original latents into every combined prediction (after the CFG), or
        # for the timestep samplers into every model input (``mask_before_denoising``).
        self.blend: LatentBlend | None = None
        self.blend_before = False
        #: inpainting / instruct-pix2pix image conditioning, one row per image (the negative gets the same)
        self.image_cond: torch.Tensor | None = None
        #: instruct-pix2pix with an image CFG scale other than 1: A1111's three-way guidance (is_edit_model)
        self.image_cfg_scale: float | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.should_stop():
            raise Interrupted
        if self.blend is not None and self.blend_before:
            x = self.blend(x)
        batch = x.shape[0]
        tensor, uncond, conds_list = self._conds_now()
        repeats = [len(c) for c in conds_list]
        negatives = [x, x] if self.image_cfg_scale is not None else [x]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + negatives)
        sigma_in = torch.cat(
            [torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)]
            + [sigma] * len(negatives)
        )
        skip_uncond = self._skips_uncond(sigma)
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch], sigma_in[:-batch]
        x_out = self._predict(x_in, sigma_in, tensor, uncond, batch, skip_uncond)
        first_of_image = [entry[0][0] for entry in conds_list]
        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[i : i + 1] for i in first_of_image])])
        if self.keep_last_uncond:
            self.last_uncond = torch.clone(x_out[-batch:])
        scale = 1.0 if skip_uncond else self.cond_scale * self.cond_scale_multiplier
        denoised = self._combine(x_out, conds_list, batch, scale)
        if self.blend is not None and not self.blend_before:
            denoised = self.blend(denoised)
        first_out = torch.cat([x_out[i : i + 1] for i in first_of_image])
        if self.pred_x0 is None:
            self.last_latent = first_out
        else:
            self.last_latent = self.pred_x0(
                torch.cat([x_in[i : i + 1] for i in first_of_image]), first_out, sigma
            )
        self.step += 1
        return denoised

    def _combine(
        self, x_out: torch.Tensor, conds_list: list[list[tuple[int, float]]], batch: int, scale: float
    ) -> torch.Tensor:
        """A1111's ``combine_denoised`` (every prompt part against the negative, by its weight), or for
        instruct-pix2pix ``combine_denoised_for_edit_model``: prompt vs image, image vs nothing."""
        if self.image_cfg_scale is not None:
            out_cond, out_img_cond, out_uncond = x_out.chunk(3)
            return (
                out_uncond
                + scale * (out_cond - out_img_cond)
                + self.image_cfg_scale * (out_img_cond - out_uncond)
            )
        denoised_uncond = x_out[-batch:]
        denoised = torch.clone(denoised_uncond)
        for i, entry in enumerate(conds_list):
            for cond_index, weight in entry:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * scale)
        return denoised

    def _conds_now(self) -> tuple[CondBatch, CondBatch, list[list[tuple[int, float]]]]:
        """This step's prompt conditionings (every ``AND`` part of every image), the negatives, and for
        each image its parts as (row, weight)."""
        conds: list[Cond] = []
        conds_list: list[list[tuple[int, float]]] = []
        for composed in self.conds.positive:
            entry = []
            for schedule, weight in composed.parts:
                entry.append((len(conds), weight))
                conds.append(schedule.at(self.step))
            conds_list.append(entry)
        uncond = stack_conds([neg.at(self.step) for neg in self.conds.negative])
        tensor = stack_conds(conds)
        if self.image_cond is not None:
            image = self.image_cond
            rows = [image[i] for i, entry in enumerate(conds_list) for _ in entry]
            tensor = replace(tensor, image=torch.stack(rows))
            uncond = replace(uncond, image=image)
            if self.image_cfg_scale is not None:  # instruct-pix2pix: the negative again, on no image
                self._check_edit(tensor, uncond, conds_list)
                uncond = _cat(uncond, replace(uncond, image=torch.zeros_like(image)))
        return tensor, uncond, conds_list

    def _check_edit(
        self, tensor: CondBatch, uncond: CondBatch, conds_list: list[list[tuple[int, float]]]
    ) -> None:
        """What A1111's three-way guidance cannot run (it asserts, or mixes up the rows)."""
        if any(len(entry) != 1 for entry in conds_list):
            raise SamplingError(
                "AND is not supported for an instruct-pix2pix checkpoint unless image_cfg_scale is 1"
            )
        if tensor.context.shape[1] != uncond.context.shape[1]:
            raise SamplingError(
                "an instruct-pix2pix checkpoint with image_cfg_scale needs the prompt and the negative "
                "prompt in the same number of 75-token chunks"
            )
        if self.options.skip_early_cond != 0.0:
            raise SamplingError("skip_early_cond is not supported for an instruct-pix2pix checkpoint")

    def _skips_uncond(self, sigma: torch.Tensor) -> bool:
        """A1111's "Skip Early CFG" and negative-guidance minimum sigma (NGMS): no negative this step."""
        opts = self.options
        if opts.skip_early_cond != 0.0 and self.step / self.total_steps <= opts.skip_early_cond:
            opts.extra_params["Skip Early CFG"] = opts.skip_early_cond
            return True
        if (
            (self.step % 2 or opts.s_min_uncond_all)
            and opts.s_min_uncond > 0
            and float(sigma[0]) < opts.s_min_uncond
            and self.image_cfg_scale is None
        ):
            opts.extra_params["NGMS"] = opts.s_min_uncond
            if opts.s_min_uncond_all:
                opts.extra_params["NGMS all steps"] = opts.s_min_uncond_all
            return True
        return False

    def _predict(
        self,
        x_in: torch.Tensor,
        sigma_in: torch.Tensor,
        tensor: CondBatch,
        uncond: CondBatch,
        batch: int,
        skip_uncond: bool,
    ) -> torch.Tensor:
        """The model's predictions for every prompt row, then (unless skipped) the negatives."""
        batch_cond_uncond = self.options.batch_cond_uncond
        if tensor.context.shape[1] == uncond.context.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else _cat(tensor, uncond)
            if batch_cond_uncond:
                return self.inner(x_in, sigma_in, cond_in)
            x_out = torch.zeros_like(x_in)
            for a in range(0, x_out.shape[0], batch):
                b = a + batch
                x_out[a:b] = self.inner(x_in[a:b], sigma_in[a:b], cond_in.rows(a, b))
            return x_out
        # Prompt and negative of different lengths: separate passes, no padding (pad_cond_uncond off).
        n_cond = tensor.context.shape[0]
        x_out = torch.zeros_like(x_in)
        step = batch * 2 if batch_cond_uncond else batch
        for a in range(0, n_cond, step):
            b = min(a + step, n_cond)
            x_out[a:b] = self.inner(x_in[a:b], sigma_in[a:b], tensor.rows(a, b))
        x_out[-batch:] = self.inner(x_in[-batch:], sigma_in[-batch:], uncond)
        return x_out


def _cat(a: CondBatch, b: CondBatch) -> CondBatch:
    pooled = None if a.pooled is None or b.pooled is None else torch.cat([a.pooled, b.pooled])
    image = None if a.image is None or b.image is None else torch.cat([a.image, b.image])
    return CondBatch(torch.cat([a.context, b.context]), pooled, image)
