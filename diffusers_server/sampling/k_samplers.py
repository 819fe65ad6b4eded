"""The k-diffusion-family samplers A1111 lists, written from their published algorithms.

Every function integrates the probability-flow ODE (or SDE) of a denoiser ``model(x, sigma)`` along the
noise levels ``sigmas`` (descending, ending in 0):

- Euler, Heun, DPM2 (and their ancestral variants): Karras et al. 2022, "Elucidating the Design Space of
  Diffusion-Based Generative Models", Algorithm 2 (with the optional "churn" noise), DPM2's midpoint in
  log-sigma;
- LMS: linear multistep with Lagrange-polynomial coefficients integrated exactly;
- DPM fast / adaptive: Lu et al. 2022, "DPM-Solver", fixed and adaptive (PID step size control) variants;
- DPM++ 2S a, 2M, SDE, 2M SDE (midpoint and Heun), 3M SDE: Lu et al. 2022, "DPM-Solver++";
- Restart: Xu et al. 2023, "Restart Sampling for Improving Generative Processes", with A1111's defaults;
- LCM: Luo et al. 2023, "Latent Consistency Models" multistep sampling.

Noise comes from ``ctx.noise()`` (A1111's per-image generators) or ``ctx.noise_sampler`` (Brownian
trees for the SDE samplers), in the order A1111 draws it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .schedules import karras

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerContext:
    """What a sampler needs besides the model and the schedule."""

    noise: Callable[[], torch.Tensor]
    callback: Callable[[int], None] = lambda _i: None
    noise_sampler: NoiseSampler | None = None
    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    # DPM fast/adaptive work between two noise levels instead of on a schedule.
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    n: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def sample_noise(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if self.noise_sampler is not None:
            return self.noise_sampler(sigma, sigma_next)
        return self.noise()


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def derivative(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE. A1111 divides by the bare (0-dim) sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float) -> tuple[Any, Any]:
    """Split a step into a deterministic move to ``sigma_down`` and fresh noise of size ``sigma_up``."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _churn(x: torch.Tensor, sigmas: torch.Tensor, i: int, ctx: SamplerContext) -> tuple[torch.Tensor, Any]:
    """Karras's stochastic churn: raise the noise level to sigma_hat (A1111 draws the noise every step)."""
    gamma = min(ctx.s_churn / (len(sigmas) - 1), 2**0.5 - 1) if ctx.s_tmin <= sigmas[i] <= ctx.s_tmax else 0.0
    eps = ctx.noise() * ctx.s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def euler(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, ctx)
        denoised = model(x, sigma_hat * s_in)
        d = derivative(x, sigma_hat, denoised)
        ctx.callback(i)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def heun(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, ctx)
        denoised = model(x, sigma_hat * s_in)
        d = derivative(x, sigma_hat, denoised)
        ctx.callback(i)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = derivative(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
    return x


def dpm_2(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, ctx)
        denoised = model(x, sigma_hat * s_in)
        d = derivative(x, sigma_hat, denoised)
        ctx.callback(i)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = derivative(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def euler_ancestral(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], ctx.eta)
        ctx.callback(i)
        x = x + derivative(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + ctx.sample_noise(sigmas[i], sigmas[i + 1]) * ctx.s_noise * sigma_up
    return x


def dpm_2_ancestral(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], ctx.eta)
        ctx.callback(i)
        d = derivative(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = derivative(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + ctx.sample_noise(sigmas[i], sigmas[i + 1]) * ctx.s_noise * sigma_up
    return x


def _lagrange_integral(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j} (nodes t_i back to
    t_{i-order+1})."""
    nodes = [t[i - k] for k in range(order) if k != j]
    poly = np.poly1d([1.0])
    for node in nodes:
        poly *= np.poly1d([1.0, -node]) / (t[i - j] - node)
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


def lms(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext, order: int = 4
) -> torch.Tensor:
    s_in = _ones(x)
    sigmas_cpu = sigmas.detach().cpu().numpy().astype(np.float64)
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds.append(derivative(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        ctx.callback(i)
        cur_order = min(i + 1, order)
        coeffs = [_lagrange_integral(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=True))
    return x


def dpmpp_2s_ancestral(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], ctx.eta)
        ctx.callback(i)
        if sigma_down == 0:
            x = x + derivative(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            # DPM-Solver++(2S) in lambda = -log(sigma), midpoint r = 1/2.
            t, t_next = -sigmas[i].log(), -torch.as_tensor(sigma_down).log()
            h = t_next - t
            s = t + h / 2
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp() * s_in)
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + ctx.sample_noise(sigmas[i], sigmas[i + 1]) * ctx.s_noise * sigma_up
    return x


def dpmpp_sde(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext, r: float = 0.5
) -> torch.Tensor:
    s_in = _ones(x)
    noise = ctx.noise_sampler or (lambda _a, _b: ctx.noise())

    def sigma_fn(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def t_fn(sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma).log().neg()

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ctx.callback(i)
        if sigmas[i + 1] == 0:
            x = x + derivative(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(sigma_fn(t), sigma_fn(s), ctx.eta)
        s_ = t_fn(sd)
        x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(sigma_fn(t), sigma_fn(s)) * ctx.s_noise * su
        denoised_2 = model(x_2, sigma_fn(s) * s_in)
        sd, su = ancestral_step(sigma_fn(t), sigma_fn(t_next), ctx.eta)
        t_next_ = t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(sigma_fn(t), sigma_fn(t_next)) * ctx.s_noise * su
    return x


def dpmpp_2m(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ctx.callback(i)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        ratio = t_next.neg().exp() / t.neg().exp()
        if old_denoised is None or sigmas[i + 1] == 0:
            x = ratio * x - (-h).expm1() * denoised
        else:
            r = (t + sigmas[i - 1].log()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = ratio * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _dpmpp_2m_sde(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext, solver: str
) -> torch.Tensor:
    s_in = _ones(x)
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    h: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ctx.callback(i)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = -sigmas[i + 1].log() + sigmas[i].log()
            eta_h = ctx.eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (
                        denoised - old_denoised
                    )
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if ctx.eta:
                scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * ctx.s_noise
                x = x + ctx.sample_noise(sigmas[i], sigmas[i + 1]) * scale
        old_denoised = denoised
        h_last = h
    return x


def dpmpp_2m_sde(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    return _dpmpp_2m_sde(model, x, sigmas, ctx, "midpoint")


def dpmpp_2m_sde_heun(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    return _dpmpp_2m_sde(model, x, sigmas, ctx, "heun")


def dpmpp_3m_sde(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h: torch.Tensor | None = None
    h_1: torch.Tensor | None = None
    h_2: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ctx.callback(i)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = -sigmas[i + 1].log() + sigmas[i].log()
            h_eta = h * (ctx.eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if ctx.eta:
                scale = sigmas[i + 1] * (-2 * h * ctx.eta).expm1().neg().sqrt() * ctx.s_noise
                x = x + ctx.sample_noise(sigmas[i], sigmas[i + 1]) * scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ---- DPM-Solver (fast and adaptive), in t = -log(sigma) ----


class _DPMSolver:
    def __init__(self, model: Model, ctx: SamplerContext):
        self.model = model
        self.ctx = ctx
        self.calls = 0

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return -sigma.log()

    def eps(self, cache: dict[str, torch.Tensor], key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = self.sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma)) / self.sigma(t)
        return cache[key]

    def step_1(
        self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 0.5,
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        )

    def step_3(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 1 / 3,
        r2: float = 2 / 3,
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )

    def _ancestral(
        self, s: torch.Tensor, t: torch.Tensor, t_end: torch.Tensor, minimum: bool
    ) -> tuple[torch.Tensor, Any]:
        if not self.ctx.eta:
            return t, 0.0
        sd, _ = ancestral_step(self.sigma(s), self.sigma(t), self.ctx.eta)
        t_ = torch.minimum(t_end, self.t(sd)) if minimum else self.t(sd)
        su = (self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5
        return t_, su

    def fast(self, x: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor, nfe: int) -> torch.Tensor:
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache: dict[str, torch.Tensor] = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self._ancestral(t, t_next, t_end, minimum=True)
            self.eps(cache, "eps", x, t)
            self.ctx.callback(i)
            step = self.step_1 if order == 1 else self.step_2 if order == 2 else self.step_3
            x = step(x, t, t_next_, cache)
            x = x + su * self.ctx.s_noise * self.ctx.noise()
        return x

    def adaptive(
        self,
        x: torch.Tensor,
        t_start: torch.Tensor,
        t_end: torch.Tensor,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        accept_safety: float = 0.81,
    ) -> torch.Tensor:
        """Embedded DPM-Solver-2/3 pair, integral step-size controller (pcoeff 0, icoeff 1, dcoeff 0)."""
        forward = t_end > t_start
        h = abs(h_init) * (1 if forward else -1)
        atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
        s = t_start
        x_prev = x
        controller_order = 1.5 if self.ctx.eta else order
        errs: list[float] = []
        steps = 0
        eps_guard = 1e-8
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            cache: dict[str, torch.Tensor] = {}
            t = torch.minimum(t_end, s + h) if forward else torch.maximum(t_end, s + h)
            t_, su = self._ancestral(s, t, t_end, minimum=True)
            self.eps(cache, "eps", x, s)
            if order == 2:
                x_low = self.step_1(x, s, t_, cache)
                x_high = self.step_2(x, s, t_, cache)
            else:
                x_low = self.step_2(x, s, t_, cache, r1=1 / 3)
                x_high = self.step_3(x, s, t_, cache)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            inv_error = 1 / (float(error) + eps_guard)
            if not errs:
                errs = [inv_error, inv_error, inv_error]
            errs[0] = inv_error
            factor = 1 + math.atan(errs[0] ** (1.0 / controller_order) - 1)
            accept = factor >= accept_safety
            if accept:
                errs[2], errs[1] = errs[1], errs[0]
            h *= factor
            if accept:
                x_prev = x_low
                x = x_high + su * self.ctx.s_noise * self.ctx.noise()
                s = t
            steps += 1
            self.ctx.callback(steps - 1)
        return x


def dpm_fast(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    del sigmas  # DPM fast integrates between the model's own sigma_max and sigma_min in ctx.n evaluations
    solver = _DPMSolver(model, ctx)
    t_start, t_end = solver.t(torch.tensor(ctx.sigma_max)), solver.t(torch.tensor(ctx.sigma_min))
    return solver.fast(x, t_start, t_end, ctx.n)


def dpm_adaptive(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    del sigmas  # the step size is chosen by the error controller
    solver = _DPMSolver(model, ctx)
    t_start, t_end = solver.t(torch.tensor(ctx.sigma_max)), solver.t(torch.tensor(ctx.sigma_min))
    return solver.adaptive(x, t_start, t_end)


def restart(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """Heun steps with A1111's default restart plan: from 20 steps on, part of the budget goes to jumping
    back up to sigma 2 near sigma 0.1 and integrating down again."""
    s_in = _ones(x)
    steps = sigmas.shape[0] - 1
    plan: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item()).to(
            sigmas.device
        )
        plan = {0.1: (restart_steps + 1, restart_times, 2.0)}
    at_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in plan.items()}
    step_list: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in at_index:
            r_steps, r_times, r_max = at_index[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - r_max), dim=0))
            if max_idx < min_idx:
                up = karras(r_steps, sigmas[min_idx].item(), sigmas[max_idx].item()).to(sigmas.device)[:-1]
                for _ in range(r_times):
                    step_list.extend(itertools.pairwise(up))
    last_sigma: torch.Tensor | None = None
    for index, (old_sigma, new_sigma) in enumerate(step_list):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + ctx.noise() * ctx.s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, old_sigma * s_in)
        d = derivative(x, old_sigma, denoised)
        ctx.callback(index)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = derivative(x_2, new_sigma, model(x_2, new_sigma * s_in))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x


def lcm(model: Model, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in)
        ctx.callback(i)
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * ctx.sample_noise(sigmas[i], sigmas[i + 1])
    return x


ALGORITHMS: dict[str, Callable[[Model, torch.Tensor, torch.Tensor, SamplerContext], torch.Tensor]] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpm_fast": dpm_fast,
    "dpm_adaptive": dpm_adaptive,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "restart": restart,
    "lcm": lcm,
}
