"""A1111's timestep samplers: DDIM, DDIM CFG++, PLMS and UniPC, on the model's epsilon prediction.

- DDIM: Song et al. 2021, "Denoising Diffusion Implicit Models" (eta = 0 is deterministic);
- DDIM CFG++: Chung et al. 2024, "CFG++": the step direction uses the unconditional prediction and the CFG
  scale is divided by 12.5;
- PLMS: Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models" (a pseudo improved-Euler first
  step, then Adams-Bashforth of order 2..4);
- UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework", multistep, data prediction,
  with A1111's defaults (B(h) variant bh1, time-uniform steps, order 3, lower order at the end), on the
  continuous-time VP schedule interpolated from the discrete one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .k_samplers import SamplerContext

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SamplingError(ValueError):
    """A request the sampler cannot run (e.g. fewer UniPC steps than its order)."""


def _alphas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alphas = alphas_cumprod[timesteps]
    previous = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return alphas, previous


def ddim(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    ctx: SamplerContext,
    last_uncond: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """DDIM from ``timesteps[-1]`` down to ``timesteps[0]`` (A1111 runs ``len(timesteps) - 1`` steps)."""
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps)
    a64 = alphas.to(torch.float64)
    sigmas = ctx.eta * torch.sqrt((1 - alphas_prev) / (1 - a64) * (1 - a64 / alphas_prev))
    sqrt_one_minus = torch.sqrt(1 - alphas)
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in)
        direction = e_t if last_uncond is None else last_uncond()
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus[index].item() * s_x * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * direction
        x = a_prev.sqrt() * pred_x0 + dir_xt + sigma_t * ctx.noise()
        ctx.callback(i)
    return x


def plms(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    ctx: SamplerContext,
) -> torch.Tensor:
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps)
    sqrt_one_minus = torch.sqrt(1 - alphas)
    s_in = x.new_ones([x.shape[0]])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps: list[torch.Tensor] = []

    def step(x: torch.Tensor, e_t: torch.Tensor, index: int) -> torch.Tensor:
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus[index].item() * s_x * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in)
        if not old_eps:
            x_prev = step(x, e_t, index)
            e_next = model(x_prev, timesteps[max(index - 1, 0)].item() * s_in)
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = step(x, e_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        ctx.callback(i)
    return x


class _VPSchedule:
    """The discrete schedule as a continuous-time VP SDE: log(alpha_t) interpolated piecewise-linearly on
    t_n = (n + 1) / N."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.total_n = len(alphas_cumprod)
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]
        self.log_alpha_array = 0.5 * torch.log(alphas_cumprod.cpu().float())

    @staticmethod
    def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation through (xp, fp), extended linearly beyond the ends."""
        flat = x.reshape(-1)
        ascending = xp[-1] >= xp[0]
        xs, ys = (xp, fp) if ascending else (xp.flip(0), fp.flip(0))
        idx = (torch.searchsorted(xs.to(flat.device), flat, right=False) - 1).clamp(0, xs.shape[0] - 2)
        xs, ys = xs.to(flat.device), ys.to(flat.device)
        x0, x1, y0, y1 = xs[idx], xs[idx + 1], ys[idx], ys[idx + 1]
        return (y0 + (flat - x0) * (y1 - y0) / (x1 - x0)).reshape(x.shape)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._interp(t, self.t_array, self.log_alpha_array)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)).to(lamb.device), -2.0 * lamb)
        return self._interp(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))


def unipc(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    ctx: SamplerContext,
    *,
    is_img2img: bool = False,
    variant: str = "bh1",
    skip_type: str = "time_uniform",
    order: int = 3,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC multistep with data prediction: ``len(timesteps)`` steps from t = 1 (or the img2img start)."""
    ns = _VPSchedule(alphas_cumprod)
    steps = len(timesteps)
    if steps < order:
        raise SamplingError(
            f"UniPC needs at least uni_pc_order={order} steps, got {steps} (A1111 fails the same way)"
        )
    t_0 = 1.0 / ns.total_n
    t_T = float(timesteps[-1] / 1000 + 1 / 1000) if is_img2img else 1.0
    device = x.device

    if skip_type == "logSNR":
        lambda_T, lambda_0 = ns.lambda_(torch.tensor(t_T)), ns.lambda_(torch.tensor(t_0))
        ts = ns.inverse_lambda(torch.linspace(float(lambda_T), float(lambda_0), steps + 1)).to(device)
    elif skip_type == "time_quadratic":
        ts = torch.linspace(t_T**0.5, t_0**0.5, steps + 1).pow(2).to(device)
    else:
        ts = torch.linspace(t_T, t_0, steps + 1).to(device)

    def data_prediction(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noise = model(x, (t - 1.0 / ns.total_n) * 1000.0)
        alpha_t, sigma_t = torch.exp(ns.log_alpha(t)), ns.std(t)
        return (x - sigma_t[:, None, None, None].to(x.device) * noise) / alpha_t[:, None, None, None].to(
            x.device
        )

    def update(
        x: torch.Tensor,
        models: list[torch.Tensor],
        t_prev: list[torch.Tensor],
        t: torch.Tensor,
        step_order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lambda_prev_0, lambda_t = ns.lambda_(t_prev[-1]), ns.lambda_(t)
        model_prev_0 = models[-1]
        sigma_prev_0, sigma_t = ns.std(t_prev[-1]), ns.std(t)
        alpha_t = torch.exp(ns.log_alpha(t))
        h = lambda_t - lambda_prev_0
        rks: list[torch.Tensor | float] = []
        d1s_list: list[torch.Tensor] = []
        for i in range(1, step_order):
            rk = ((ns.lambda_(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s_list.append((models[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor([float(r) for r in rks], device=x.device)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        factorial = 1
        for i in range(1, step_order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_mat = torch.stack(rows)
        b_t = torch.tensor([float(v) for v in b], device=x.device)
        d1s = torch.stack(d1s_list, dim=1) if d1s_list else None
        scale_x = (sigma_t / sigma_prev_0)[:, None, None, None].to(x.device)
        x_t_ = scale_x * x - (alpha_t * h_phi_1)[:, None, None, None].to(x.device) * model_prev_0
        ab = (alpha_t * b_h)[:, None, None, None].to(x.device)
        if d1s is not None:
            rhos_p = (
                torch.tensor([0.5], device=x.device)
                if step_order == 2
                else torch.linalg.solve(r_mat[:-1, :-1], b_t[:-1])
            )
            x_t = x_t_ - ab * torch.einsum("k,bkchw->bchw", rhos_p, d1s)
        else:
            x_t = x_t_
        model_t = None
        if use_corrector:
            model_t = data_prediction(x_t, t)
            rhos_c = (
                torch.tensor([0.5], device=x.device) if step_order == 1 else torch.linalg.solve(r_mat, b_t)
            )
            corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s) if d1s is not None else 0
            x_t = x_t_ - ab * (corr + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t

    vec_t = ts[0].expand(x.shape[0])
    models = [data_prediction(x, vec_t)]
    t_prev = [vec_t]
    for init_order in range(1, order):
        vec_t = ts[init_order].expand(x.shape[0])
        x, model_x = update(x, models, t_prev, vec_t, init_order, True)
        if model_x is None:
            model_x = data_prediction(x, vec_t)
        ctx.callback(init_order - 1)
        models.append(model_x)
        t_prev.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = ts[step].expand(x.shape[0])
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = update(x, models, t_prev, vec_t, step_order, step != steps)
        ctx.callback(step - 1)
        for i in range(order - 1):
            t_prev[i], models[i] = t_prev[i + 1], models[i + 1]
        t_prev[-1] = vec_t
        if step < steps:
            models[-1] = model_x if model_x is not None else data_prediction(x, vec_t)
    return x
