"""One sampling pass as A1111 runs it: txt2img from noise, or img2img (the hires pass) from latents.

``KSampling``/timestep/LCM dispatch follows A1111 v1.10 ``sd_samplers_kdiffusion``, ``sd_samplers_timesteps``
and ``sd_samplers_lcm``: the schedule is built for the requested steps, the initial noise is scaled to the
first sigma, SDE samplers get per-image Brownian trees, and the sampler runs the CFG denoiser. An
interrupted or skipped pass returns the last prediction of the clean latents, as A1111 does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..cond_schedule import BatchConds
from ..samplers import ResolvedSampler
from . import k_samplers, timestep_samplers
from .denoiser import (
    CFGDenoiser,
    EpsDenoiser,
    GuidanceOptions,
    Interrupted,
    LatentBlend,
    LCMDenoiser,
    TimestepModel,
    UNetModel,
)
from .noise import BrownianNoise, ImageNoise
from .schedules import DiscreteSchedule, LCMSchedule, ScheduleOptions, build_sigmas, timestep_schedule


@dataclass
class SamplingOptions:
    """Request fields and A1111 options that change sampling; every default is A1111's."""

    eta: float | None = None  # the request's eta (None: the option for the sampler family)
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 = infinity
    s_noise: float = 1.0
    s_min_uncond: float = 0.0
    # The sigma options set away from their defaults in A1111's settings (they go into the infotext).
    sigma_options: dict[str, float] = field(default_factory=dict)
    sgm_noise_multiplier: bool = False
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)


@dataclass
class Pass:
    """Everything one sampling pass needs besides the latents."""

    sampler: ResolvedSampler
    conds: BatchConds
    cfg_scale: float
    seeds: list[int]
    noise: ImageNoise
    unet: UNetModel
    alphas_cumprod: torch.Tensor
    options: SamplingOptions
    should_stop: Callable[[], bool]
    on_step: Callable[[int], None]
    extra_params: dict[str, Any] = field(default_factory=dict)
    #: inpainting: after every model call the prediction outside the mask is put back (A1111's blend)
    blend: LatentBlend | None = None
    #: an inpainting UNet's image conditioning, made after the first noise draw (A1111's order: its VAE
    #: encode samples from the global generator that the draw re-seeds)
    image_cond: Callable[[], torch.Tensor] | None = None
    #: instruct-pix2pix: the request's ``image_cfg_scale`` (A1111's three-way guidance unless None or 1)
    image_cfg_scale: float | None = None


class _Prepared:
    def __init__(self, p: Pass, device: torch.device):
        self.p = p
        algo = p.sampler.sampler.algorithm
        family = p.sampler.sampler.family
        self.family = family
        if family == "lcm":
            self.schedule: DiscreteSchedule = LCMSchedule(p.alphas_cumprod.cpu())
        else:
            self.schedule = DiscreteSchedule(p.alphas_cumprod.cpu())
        device_schedule = self.schedule.to(device)
        inner: Any
        if family == "timesteps":
            inner = TimestepModel(p.unet)
        elif family == "lcm":
            inner = LCMDenoiser(p.unet, device_schedule)
        else:
            inner = EpsDenoiser(p.unet, device_schedule)
        opts = p.options
        self.guidance = GuidanceOptions(s_min_uncond=opts.s_min_uncond, extra_params=p.extra_params)
        total = p.sampler.sampler.total_steps(1)  # multiplier; the pass sets the real total below
        self.cfg = CFGDenoiser(inner, p.conds, p.cfg_scale, total, p.should_stop, self.guidance)
        self.cfg.blend, self.cfg.blend_before = p.blend, family == "timesteps"
        self.cfg.image_cond = None if p.image_cond is None else p.image_cond().to(device)
        if p.image_cfg_scale is not None and p.image_cfg_scale != 1.0:
            self.cfg.image_cfg_scale = float(p.image_cfg_scale)
        if family == "timesteps":
            ac = p.alphas_cumprod.to(device)

            def pred_x0(x_in: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                a_t = ac[t.to(dtype=torch.long)][:, None, None, None]
                return (x_in - (1 - a_t).sqrt() * eps) / a_t.sqrt()

            self.cfg.pred_x0 = pred_x0
        self.algo = algo
        self.is_ddim = family == "timesteps"
        self.eta = self._eta()

    def _eta(self) -> float:
        opts = self.p.options
        if opts.eta is not None:
            return float(opts.eta)
        return opts.eta_ddim if self.is_ddim else opts.eta_ancestral

    def context(self, x: torch.Tensor, sigmas: torch.Tensor | None) -> k_samplers.SamplerContext:
        opts = self.p.options
        ctx = k_samplers.SamplerContext(noise=self.p.noise.next, callback=self.p.on_step, eta=self.eta)
        # A1111 passes the sigma parameters only to the samplers its ``sampler_extra_params`` lists.
        if self.algo in _USES_CHURN:
            ctx.s_churn, ctx.s_tmin, ctx.s_tmax = opts.s_churn, opts.s_tmin, opts.s_tmax or float("inf")
        if self.algo in _USES_S_NOISE:
            ctx.s_noise = opts.s_noise
        sampler = self.p.sampler.sampler
        if sigmas is not None and sampler.options.get("brownian_noise"):
            ctx.noise_sampler = BrownianNoise(x, sigmas, self.p.seeds, self.p.noise.gen_device)
        self._record_eta()
        self._record_churn()
        return ctx

    def _record_eta(self) -> None:
        if self.algo in _USES_ETA:
            default = 0.0 if self.is_ddim else 1.0
            if self.eta != default:
                self.p.extra_params["Eta DDIM" if self.is_ddim else "Eta"] = self.eta

    def _record_churn(self) -> None:
        for key, value in self.p.options.sigma_options.items():
            if self.algo in (_USES_S_NOISE if key == "Sigma noise" else _USES_CHURN):
                self.p.extra_params[key] = value

    def sigmas(self, steps: int) -> torch.Tensor:
        sampler, schedule = self.p.sampler.sampler, self.p.sampler.schedule
        return build_sigmas(
            schedule.name,
            steps,
            self.schedule,
            sdxl=self.p.unet.sdxl,
            discard_next_to_last=bool(sampler.options.get("discard_next_to_last_sigma")),
            opts=self.p.options.schedule,
            default_rho=schedule.default_rho,
            extra_params=self.p.extra_params,
        )

    def timesteps(self, steps: int) -> torch.Tensor:
        discard = self.p.options.schedule.always_discard_next_to_last_sigma
        return timestep_schedule(steps, discard)

    def run_timesteps(self, x: torch.Tensor, timesteps: torch.Tensor, is_img2img: bool) -> torch.Tensor:
        ctx = self.context(x, None)
        ac = self.p.alphas_cumprod.to(x.device)
        opts = self.p.options
        if self.algo == "unipc":
            return timestep_samplers.unipc(
                self.cfg,
                x,
                timesteps,
                ac,
                ctx,
                is_img2img=is_img2img,
                variant=opts.uni_pc_variant,
                skip_type=opts.uni_pc_skip_type,
                order=opts.uni_pc_order,
                lower_order_final=opts.uni_pc_lower_order_final,
            )
        if self.algo == "plms":
            return timestep_samplers.plms(self.cfg, x, timesteps, ac, ctx)
        last_uncond = None
        if self.algo == "ddim_cfgpp":
            self.cfg.cond_scale_multiplier = 1 / 12.5
            self.cfg.keep_last_uncond = True

            def last_uncond() -> torch.Tensor:
                assert self.cfg.last_uncond is not None
                return self.cfg.last_uncond

        return timestep_samplers.ddim(self.cfg, x, timesteps, ac, ctx, last_uncond)

    def run_k(self, x: torch.Tensor, sigmas: torch.Tensor, full_sigmas: torch.Tensor, n: int) -> torch.Tensor:
        ctx = self.context(x, full_sigmas)
        if self.algo in ("dpm_fast", "dpm_adaptive"):
            ctx.n = n
        return k_samplers.ALGORITHMS[self.algo](self.cfg, x, sigmas.to(x.device), ctx)

    def launch(self, steps: int, func: Callable[[], torch.Tensor], start: torch.Tensor) -> torch.Tensor:
        self.cfg.total_steps = self.p.sampler.sampler.total_steps(steps)
        self.cfg.last_latent = start
        try:
            return func()
        except Interrupted:
            assert self.cfg.last_latent is not None
            return self.cfg.last_latent


_USES_ETA = frozenset(
    {
        "euler_ancestral",
        "dpm_2_ancestral",
        "dpm_fast",
        "dpm_adaptive",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_heun",
        "dpmpp_3m_sde",
        "ddim",
        "ddim_cfgpp",
    }
)
_USES_CHURN = frozenset({"euler", "heun", "dpm_2"})
_USES_S_NOISE = frozenset(
    {
        "euler",
        "heun",
        "dpm_2",
        "dpm_fast",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_heun",
        "dpmpp_3m_sde",
    }
)


def txt2img(p: Pass, steps: int) -> torch.Tensor:
    """A1111 ``Sampler.sample``: latents from ``p.noise``'s first draw, denoised over ``steps`` steps."""
    x = p.noise.next()
    prep = _Prepared(p, x.device)
    if prep.family == "timesteps":
        timesteps = prep.timesteps(steps).to(x.device)
        return prep.launch(steps, lambda: prep.run_timesteps(x, timesteps, is_img2img=False), x)
    sigmas = prep.sigmas(steps)
    if p.options.sgm_noise_multiplier:
        p.extra_params["SGM noise multiplier"] = True
        x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    else:
        x = x * sigmas[0]
    if prep.algo in ("dpm_fast", "dpm_adaptive"):
        model_sigmas = prep.schedule.sigmas
        prep_ctx_min, prep_ctx_max = float(model_sigmas[0]), float(model_sigmas[-1])
        return prep.launch(steps, lambda: _dpm_between(prep, x, sigmas, prep_ctx_min, prep_ctx_max, steps), x)
    return prep.launch(steps, lambda: prep.run_k(x, sigmas, sigmas, steps), x)


def _dpm_between(
    prep: _Prepared, x: torch.Tensor, sigmas: torch.Tensor, lo: float, hi: float, n: int
) -> torch.Tensor:
    ctx = prep.context(x, sigmas)
    ctx.sigma_min, ctx.sigma_max, ctx.n = lo, hi, n
    return k_samplers.ALGORITHMS[prep.algo](prep.cfg, x, sigmas, ctx)


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool = True) -> tuple[int, int]:
    """A1111 ``setup_img2img_steps``: ``(schedule length, t_enc)``. With explicit steps (the hires pass, or
    the ``img2img_fix_steps`` option) exactly ``steps`` steps run on a longer schedule; otherwise the
    schedule has ``steps`` entries and ``int(strength * steps)`` of them run (plus one)."""
    strength = min(denoising_strength, 0.999)
    if not fix_steps:
        return steps, int(strength * steps)
    total = int(steps / strength) if denoising_strength > 0 else 0
    return total, steps - 1


def img2img(
    p: Pass, latents: torch.Tensor, schedule: tuple[int, int], noise_multiplier: float = 1.0
) -> torch.Tensor:
    """A1111 ``sample_img2img``: noise the latents to the ``t_enc`` point of a ``total``-step schedule
    (``schedule`` = ``img2img_steps(...)``) and denoise the rest."""
    noise = p.noise.next() * noise_multiplier if noise_multiplier != 1.0 else p.noise.next()
    prep = _Prepared(p, latents.device)
    total, t_enc = schedule
    if prep.family == "timesteps":
        timesteps = prep.timesteps(total).to(latents.device)
        ac = p.alphas_cumprod.to(latents.device)
        a = ac[timesteps[t_enc]]
        xi = latents * torch.sqrt(a) + noise * torch.sqrt(1 - a)
        sched = timesteps[:t_enc]
        return prep.launch(t_enc + 1, lambda: prep.run_timesteps(xi, sched, is_img2img=True), latents)
    sigmas = prep.sigmas(total)
    sched = sigmas[total - t_enc - 1 :]
    xi = latents + noise * sched[0]
    if prep.algo in ("dpm_fast", "dpm_adaptive"):
        lo, hi = float(sched[-2]), float(sched[0])
        return prep.launch(t_enc + 1, lambda: _dpm_between(prep, xi, sigmas, lo, hi, len(sched) - 1), latents)
    return prep.launch(t_enc + 1, lambda: prep.run_k(xi, sched, sigmas, len(sched) - 1), latents)
