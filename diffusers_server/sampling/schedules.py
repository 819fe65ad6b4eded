"""Noise levels: the model's discrete sigma table and A1111's twelve schedule types.

A model trained on 1000 discrete timesteps has one noise level (sigma) per timestep. Samplers work in
continuous sigma, so a sigma is mapped to a fractional timestep by interpolating linearly in log-sigma
between its two neighbours (k-diffusion's ``DiscreteSchedule``, A1111's default with quantization off).
The schedule functions follow A1111 v1.10 ``modules/sd_schedulers.py`` (Karras, exponential and
polyexponential from Karras et al. 2022; Align Your Steps from NVIDIA's published tables; KL-optimal and
Beta from their papers), including its quirks (KL Optimal ends at sigma_min, not 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from scipy import stats

TRAIN_STEPS = 1000
LINEAR_START, LINEAR_END = 0.00085, 0.012  # SD1.x/SDXL "scaled linear" betas

# NVIDIA's published Align Your Steps sigmas for 10 steps (https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/)
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def train_alphas_cumprod() -> torch.Tensor:
    """SD's training schedule as LDM/SGM build it: betas on a sqrt-linear ramp in float64, then float32."""
    betas = np.linspace(LINEAR_START**0.5, LINEAR_END**0.5, TRAIN_STEPS, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


class InnerSchedule(Protocol):
    """What the schedule types need from the model's noise table."""

    sigmas: torch.Tensor

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    def get_sigmas(self, n: int) -> torch.Tensor: ...


class DiscreteSchedule:
    """The model's sigma per training timestep, ascending, and the log-sigma interpolation between them."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def to(self, device: torch.device | str) -> DiscreteSchedule:
        return type(self)(self.alphas_cumprod.to(device))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep: the index interpolated linearly in log-sigma (clamped to the table)."""
        log_sigma = sigma.log()
        table = self.log_sigmas.to(log_sigma.device)
        flat = log_sigma.reshape(-1)
        low_idx = (torch.searchsorted(table, flat, right=True) - 1).clamp(0, table.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = table[low_idx], table[high_idx]
        w = ((low - flat) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        table = self.log_sigmas.to(t.device)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * table[low_idx] + w * table[high_idx]).exp()

    def get_sigmas(self, n: int) -> torch.Tensor:
        """``n`` sigmas evenly spaced in timestep from the last to the first, then 0 (A1111's Automatic)."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))


class LCMSchedule(DiscreteSchedule):
    """LCM's 50-entry table (every 20th training timestep) with quantized timesteps (A1111's LCM sampler)."""

    ORIGINAL_STEPS = 50

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.full_alphas_cumprod = alphas_cumprod
        self.skip = TRAIN_STEPS // self.ORIGINAL_STEPS
        picked = [alphas_cumprod[TRAIN_STEPS - 1 - i * self.skip] for i in range(self.ORIGINAL_STEPS)]
        super().__init__(torch.stack(picked[::-1]).to(torch.float32))

    def to(self, device: torch.device | str) -> LCMSchedule:
        return type(self)(self.full_alphas_cumprod.to(device))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().reshape(-1) - self.log_sigmas.to(sigma.device)[:, None]
        return (dists.abs().argmin(dim=0) * self.skip + (self.skip - 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        index = torch.clamp(((t - (self.skip - 1)) / self.skip).float(), min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def get_sigmas(self, n: int) -> torch.Tensor:
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        t = torch.linspace(float(start), float(end), n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))


# ---- A1111's schedule types; each returns n sigmas then (except KL Optimal's quirk) a final 0 ----


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    log_min = math.log(sigma_min)
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - log_min) + log_min))


def _timestep_spaced(
    n: int, sigma_min: float, sigma_max: float, inner: InnerSchedule, sgm: bool
) -> torch.Tensor:
    start = inner.sigma_to_t(torch.tensor(sigma_max))
    end = inner.sigma_to_t(torch.tensor(sigma_min))
    timesteps = (
        torch.linspace(float(start), float(end), n + 1)[:-1]
        if sgm
        else torch.linspace(float(start), float(end), n)
    )
    values = [float(inner.t_to_sigma(ts)) for ts in timesteps]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma); A1111 returns n + 1 values ending at sigma_min (no final 0)."""
    alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    idx = torch.arange(n + 1)
    return torch.tan(idx / n * alpha_min + (1.0 - idx / n) * alpha_max)


def align_your_steps(n: int, sdxl: bool) -> torch.Tensor:
    """NVIDIA's 10-step table, log-linearly interpolated to ``n`` steps."""
    table = list(AYS_SDXL if sdxl else AYS_SD15)
    if n == len(table):
        return torch.tensor([*table, 0.0], dtype=torch.float32)
    xs = np.linspace(0, 1, len(table))
    ys = np.log(table[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.tensor(np.append(interpolated, [0.0]), dtype=torch.float32)


def simple(n: int, inner: InnerSchedule) -> torch.Tensor:
    stride = len(inner.sigmas) / n
    values = [float(inner.sigmas[-(1 + int(x * stride))]) for x in range(n)]
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def ddim_uniform(n: int, inner: InnerSchedule) -> torch.Tensor:
    stride = max(len(inner.sigmas) // n, 1)
    values = [float(inner.sigmas[x]) for x in range(1, len(inner.sigmas), stride)]
    return torch.tensor([*values[::-1], 0.0], dtype=torch.float32)


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float, beta_: float) -> torch.Tensor:
    """Lee et al. 2024 ("Beta sampling is all you need"): timesteps at the Beta(alpha, beta) quantiles."""
    quantiles = [float(stats.beta.ppf(x, alpha, beta_)) for x in 1 - np.linspace(0, 1, n)]
    return torch.tensor(
        [sigma_min + q * (sigma_max - sigma_min) for q in quantiles] + [0.0], dtype=torch.float32
    )


@dataclass(frozen=True)
class ScheduleOptions:
    """The A1111 options that shape a schedule (0 = the schedule's own default)."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    always_discard_next_to_last_sigma: bool = False

    @classmethod
    def from_options(cls, opts: dict[str, Any]) -> ScheduleOptions:
        return cls(
            sigma_min=float(opts.get("sigma_min", 0.0) or 0.0),
            sigma_max=float(opts.get("sigma_max", 0.0) or 0.0),
            rho=float(opts.get("rho", 0.0) or 0.0),
            beta_alpha=float(opts.get("beta_dist_alpha", 0.6)),
            beta_beta=float(opts.get("beta_dist_beta", 0.6)),
            always_discard_next_to_last_sigma=bool(opts.get("always_discard_next_to_last_sigma", False)),
        )


@dataclass(frozen=True)
class _SigmaRange:
    """What a schedule function is given: how many sigmas, between which bounds, with which rho."""

    n: int
    lo: float
    hi: float
    rho: float
    inner: DiscreteSchedule
    sdxl: bool
    opts: ScheduleOptions


#: A1111's schedule names -> the function making ``n`` sigmas from ``hi`` down to ``lo`` (then 0)
_SCHEDULES: dict[str, Callable[[_SigmaRange], torch.Tensor]] = {
    "automatic": lambda r: r.inner.get_sigmas(r.n),
    "uniform": lambda r: r.inner.get_sigmas(r.n),
    "karras": lambda r: karras(r.n, r.lo, r.hi, r.rho),
    "exponential": lambda r: exponential(r.n, r.lo, r.hi),
    "polyexponential": lambda r: polyexponential(r.n, r.lo, r.hi, r.rho),
    "sgm_uniform": lambda r: _timestep_spaced(r.n, r.lo, r.hi, r.inner, sgm=True),
    "kl_optimal": lambda r: kl_optimal(r.n, r.lo, r.hi),
    "align_your_steps": lambda r: align_your_steps(r.n, r.sdxl),
    "simple": lambda r: simple(r.n, r.inner),
    "normal": lambda r: _timestep_spaced(r.n, r.lo, r.hi, r.inner, sgm=False),
    "ddim": lambda r: ddim_uniform(r.n, r.inner),
    "beta": lambda r: beta(r.n, r.lo, r.hi, r.opts.beta_alpha, r.opts.beta_beta),
}


def build_sigmas(
    schedule_name: str,
    steps: int,
    inner: DiscreteSchedule,
    *,
    sdxl: bool,
    discard_next_to_last: bool,
    opts: ScheduleOptions,
    default_rho: float,
    extra_params: dict[str, Any] | None = None,
) -> torch.Tensor:
    """A1111 ``KDiffusionSampler.get_sigmas``: the schedule for ``steps`` steps (one more, then the
    penultimate dropped, for samplers that discard it), on the CPU in float32."""
    if schedule_name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {schedule_name!r}")
    discard = discard_next_to_last or opts.always_discard_next_to_last_sigma
    infotext = extra_params if extra_params is not None else {}
    if opts.always_discard_next_to_last_sigma and not discard_next_to_last:
        infotext["Discard penultimate sigma"] = True
    lo, hi = _sigma_bounds(schedule_name, inner, opts, infotext)
    rho = default_rho
    if default_rho != -1 and opts.rho not in (0, default_rho):
        rho = infotext["Schedule rho"] = opts.rho
    if schedule_name == "beta":
        infotext["Beta schedule alpha"] = opts.beta_alpha
        infotext["Beta schedule beta"] = opts.beta_beta
    span = _SigmaRange(steps + 1 if discard else steps, lo, hi, rho, inner, sdxl, opts)
    sigmas = _SCHEDULES[schedule_name](span)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.cpu().float()


def _sigma_bounds(
    schedule_name: str, inner: DiscreteSchedule, opts: ScheduleOptions, infotext: dict[str, Any]
) -> tuple[float, float]:
    """The model's sigma range, or the options' ``sigma_min``/``sigma_max`` where set (then reported)."""
    m_min, m_max = float(inner.sigmas[0]), float(inner.sigmas[-1])
    lo = opts.sigma_min if opts.sigma_min not in (0, m_min) else m_min
    hi = opts.sigma_max if opts.sigma_max not in (0, m_max) else m_max
    if schedule_name != "automatic":
        if lo != m_min:
            infotext["Schedule min sigma"] = lo
        if hi != m_max:
            infotext["Schedule max sigma"] = hi
    return lo, hi


def timestep_schedule(steps: int, discard: bool) -> torch.Tensor:
    """A1111's DDIM/PLMS/UniPC timesteps: every ``1000 // steps``-th training step, shifted by one."""
    n = steps + 1 if discard else steps
    return torch.clip(torch.arange(0, TRAIN_STEPS, TRAIN_STEPS // n) + 1, 0, TRAIN_STEPS - 1)
