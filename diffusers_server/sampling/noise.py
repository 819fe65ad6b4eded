"""A1111's noise: per-image seeded generators, variation seeds, seed resize, ENSD and Brownian trees.

Mirrors A1111 v1.10 ``modules/rng.py`` (``ImageRNG``) so that a seed gives A1111's latent noise:

- one ``torch.Generator`` per image, seeded with the image's seed, on the device A1111 would use
  (``randn_source`` "GPU": the model's device; "CPU": always the CPU);
- the first draw is the initial latent; with ``eta_noise_seed_delta`` the generators are re-seeded with
  ``seed + delta`` after it; every later draw (ancestral samplers' noise) continues those generators;
- variation seeds: the subseed's noise is spherically interpolated (slerp) into the seed's noise;
- seed resize: the noise is made at the "resize from" size and pasted, centred, into noise of the real size.
"""

from __future__ import annotations

import warnings

import torch
import torchsde

# torchsde warns when a query sits a float32 rounding outside the tree's interval; A1111 queries it so too.
warnings.filterwarnings("ignore", message="Should have t", category=UserWarning, module="torchsde")

RANDN_SOURCES = ("GPU", "CPU")


def noise_device(source: str, device: torch.device) -> torch.device:
    """Where A1111 draws its noise: the model's device for "GPU" (CPU on machines without CUDA)."""
    if source == "CPU" or device.type in ("cpu", "mps"):
        return torch.device("cpu")
    return device


def _randn(seed: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device).manual_seed(int(seed))
    return torch.randn(shape, device=device, generator=generator)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per row (A1111 falls back to a linear blend for nearly parallel vectors)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(
        1
    ) * high


class ImageNoise:
    """A1111's ``ImageRNG`` for one batch: ``next()`` gives the initial noise first, then sampler noise."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        seeds: list[int],
        *,
        device: torch.device,
        source: str = "GPU",
        subseeds: list[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        eta_noise_seed_delta: int = 0,
        global_rng: torch.Generator | None = None,
    ):
        self.shape = shape
        self.seeds = list(seeds)
        self.device = device
        self.gen_device = noise_device(source, device)
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.resize = (seed_resize_from_h, seed_resize_from_w)
        self.ensd = int(eta_noise_seed_delta or 0)
        self.generators = [torch.Generator(self.gen_device).manual_seed(int(s)) for s in self.seeds]
        self.global_rng = global_rng
        self.is_first = True

    def _first(self) -> torch.Tensor:
        rh, rw = self.resize
        resized = rh > 0 and rw > 0
        noise_shape = (self.shape[0], int(rh) // 8, int(rw) // 8) if resized else self.shape
        images = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                subnoise = _randn(subseed, noise_shape, self.gen_device)
            if noise_shape != self.shape:
                noise = _randn(seed, noise_shape, self.gen_device)
            else:
                noise = torch.randn(self.shape, device=self.gen_device, generator=generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                x = torch.randn(self.shape, device=self.gen_device, generator=generator)
                dx = (self.shape[2] - noise_shape[2]) // 2
                dy = (self.shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx, ty = max(dx, 0), max(dy, 0)
                sx, sy = max(-dx, 0), max(-dy, 0)
                x[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
                noise = x
            images.append(noise)
        if self.global_rng is not None:
            # A1111's ``randn(seed, ...)`` calls ``torch.manual_seed(seed)`` for every image: the global CPU
            # generator is left seeded with the batch's last seed (the VAE encoder samples from it).
            self.global_rng.manual_seed(int(self.seeds[-1]))
        if self.ensd:
            self.generators = [
                torch.Generator(self.gen_device).manual_seed(s + self.ensd) for s in self.seeds
            ]
        return torch.stack(images).to(self.device)

    def next(self) -> torch.Tensor:
        if self.is_first:
            self.is_first = False
            return self._first()
        draws = [torch.randn(self.shape, device=self.gen_device, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)


class BrownianNoise:
    """Noise for SDE samplers from one Brownian tree per image (torchsde), seeded with the image's seed, so
    an image's noise does not depend on its batch (A1111's ``create_noise_sampler``).

    ``noise(sigma, sigma_next)`` is the tree's increment between the two noise levels, normalised to unit
    variance; the tree is queried with the levels sorted, and the sign follows the direction of travel.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int], gen_device: torch.device):
        positive = sigmas[sigmas > 0]
        self.t0, self.t1 = positive.min(), sigmas.max()
        w0 = torch.zeros(x.shape[1:], dtype=x.dtype, device=gen_device)
        self.device = x.device
        self.trees = [torchsde.BrownianTree(self.t0, w0, self.t1, entropy=int(s)) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        return w.to(self.device) / (b - a).abs().sqrt().to(self.device)


def global_generator() -> torch.Generator:
    """A stand-in for A1111's global torch CPU generator, which its noise code seeds (``ImageNoise``
    ``global_rng``) and its VAE encoder samples the posterior from (``images.encode``). In A1111 an img2img's
    posterior noise therefore depends on the request before it: the engine keeps one for the process so
    it does the same."""
    return torch.Generator("cpu")
