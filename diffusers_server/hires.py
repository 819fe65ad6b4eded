"""A1111's "hires fix" (``enable_hr``): target size, latent / image upscaling and the second-pass step count.

Mirrors A1111 v1.10 ``StableDiffusionProcessingTxt2Img`` (``calculate_target_resolution``,
``sample_hr_pass``). The second pass itself runs on :mod:`diffusers_server.sampling` (``run.img2img``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from . import image_ops

if TYPE_CHECKING:  # imported where latents are upscaled: validation uses this module before torch is loaded
    import torch

# A1111 ``shared.latent_upscale_modes``: name -> (torch interpolate mode, antialias).
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# A1111's built-in, model-free upscalers (``/upscalers``): "None" just resizes with Lanczos.
IMAGE_UPSCALERS: tuple[str, ...] = ("None", "Lanczos", "Nearest")
DEFAULT_UPSCALER = "Latent"  # A1111 option ``latent_upscale_default_mode``, used when hr_upscaler is null
SAME_CHECKPOINT = "Use same checkpoint"
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
OPT_F = 8  # latent downscale factor


def upscalers_listing() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/upscalers`` in A1111's shape (its ``UpscalerData`` default scale is 4)."""
    return [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in IMAGE_UPSCALERS
    ]


def valid_upscalers() -> list[str]:
    return [*LATENT_UPSCALE_MODES, *IMAGE_UPSCALERS]


@dataclass(frozen=True)
class HiresTarget:
    """Where the second pass renders: ``upscale_to`` (before the crop) and the crop in latent units."""

    upscale_x: int
    upscale_y: int
    truncate_x: int = 0
    truncate_y: int = 0

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of the second-pass latents, after A1111's truncation."""
        h, w = self.upscale_y // OPT_F, self.upscale_x // OPT_F
        return h - self.truncate_y // 2 - (self.truncate_y + 1) // 2, w - self.truncate_x // 2 - (
            self.truncate_x + 1
        ) // 2

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the final images."""
        h, w = self.latent_size
        return w * OPT_F, h * OPT_F


def target(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> HiresTarget:
    """A1111 ``calculate_target_resolution``: scale, or an explicit size (one side keeps the aspect ratio;
    both sides: cover, then crop the centre)."""
    if resize_x == 0 and resize_y == 0:
        return HiresTarget(int(width * scale), int(height * scale))
    if resize_y == 0:
        return HiresTarget(resize_x, resize_x * height // width)
    if resize_x == 0:
        return HiresTarget(resize_y * width // height, resize_y)
    if width / height < resize_x / resize_y:
        up_x, up_y = resize_x, resize_x * height // width
    else:
        up_x, up_y = resize_y * width // height, resize_y
    return HiresTarget(up_x, up_y, (up_x - resize_x) // OPT_F, (up_y - resize_y) // OPT_F)


def crop_latents(latents: torch.Tensor, t: HiresTarget) -> torch.Tensor:
    """A1111's ``samples[:, :, ty//2 : H-(ty+1)//2, tx//2 : W-(tx+1)//2]``."""
    h, w = latents.shape[-2:]
    return latents[
        :,
        :,
        t.truncate_y // 2 : h - (t.truncate_y + 1) // 2,
        t.truncate_x // 2 : w - (t.truncate_x + 1) // 2,
    ]


def upscale_latents(latents: torch.Tensor, mode_name: str, t: HiresTarget) -> torch.Tensor:
    """``torch.nn.functional.interpolate`` to ``upscale_to // 8`` (A1111 crops afterwards)."""
    import torch

    mode, antialias = LATENT_UPSCALE_MODES[mode_name]
    size = (t.upscale_y // OPT_F, t.upscale_x // OPT_F)
    return torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)


def upscale_image(image: Image.Image, name: str, t: HiresTarget) -> Image.Image:
    """A1111 ``images.resize_image(0, ...)`` with a built-in upscaler, to the size before the crop (A1111
    encodes the whole upscaled image and crops the latents)."""
    w, h = t.upscale_x, t.upscale_y
    if name == "None":
        image = image.resize((w, h), resample=Image.Resampling.LANCZOS)
    else:
        scale = max(w / image.width, h / image.height)
        if scale > 1.0:
            image = image_ops.upscale(image, name, scale)
        if image.size != (w, h):
            image = image.resize((w, h), resample=Image.Resampling.LANCZOS)
    return image
