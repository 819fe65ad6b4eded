"""Inpainting checkpoints' image conditioning (``sd-v1-5-inpainting``: 9-channel UNet), as in A1111 v1.10.1.

Such a UNet sees, besides the 4 latent channels, 5 more: the mask (1 = repaint) at the latent size and the
VAE encoding of the masked image. A1111 builds them once per request (``modules/processing.py``,
``inpainting_image_conditioning``) and concatenates them to the (scaled) latents at every model call, for
the prompt and the negative alike (``c_concat``):

* img2img with a mask: the processed mask (blurred, cropped and resized to the processing size, rounded
  with ``mask_round``) and the processing image (after the fill) times ``1 - mask``, blended with the whole
  image by the ``inpainting_mask_weight`` option (1: fully masked); the encoding is sampled from the global
  generator right after the init latents' (and the latent-noise fill's);
* img2img without a mask: the mask is all ones (the image then contributes nothing at weight 1);
* txt2img: a mid-grey image fully masked, encoded after the first noise draw (``txt2img_image_conditioning``).

instruct-pix2pix (8-channel) checkpoints condition on the unmasked image's latents with a separate image
guidance scale; this engine refuses them (:func:`check_supported`).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import images
from .errors import RequestRefused
from .models.pipelines import LoadedModel

PLAIN, PIX2PIX, INPAINTING = 4, 8, 9


def unet_channels(model: LoadedModel) -> int:
    return int(model.pipe.unet.config.in_channels)


def is_inpainting(model: LoadedModel) -> bool:
    return unet_channels(model) == INPAINTING


def check_supported(model: LoadedModel, title: str) -> None:
    """400 for a UNet whose extra input channels this engine does not fill (instruct-pix2pix, others)."""
    channels = unet_channels(model)
    if channels in (PLAIN, INPAINTING):
        return
    kind = "an instruct-pix2pix" if channels == PIX2PIX else f"a {channels}-channel"
    raise RequestRefused(
        400,
        f"checkpoint {title} is {kind} model ({channels}-channel UNet): its image conditioning is not "
        "supported by this engine yet (plain and inpainting checkpoints are)",
    )


def pixels_tensor(pictures: list[Image.Image]) -> torch.Tensor:
    """RGB images as A1111's ``[B, 3, H, W]`` batch in -1..1 (``np.array / 255``, then ``* 2 - 1``)."""
    arrays = [np.moveaxis(np.array(p).astype(np.float32) / 255.0, 2, 0) for p in pictures]
    return torch.from_numpy(np.stack(arrays)) * 2 - 1


def inpainting(
    model: LoadedModel,
    source: torch.Tensor,
    latent_size: tuple[int, int],
    mask: Image.Image | None,
    round_mask: bool,
    mask_weight: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """A1111's ``inpainting_image_conditioning``: ``[B, 5, h, w]`` (mask, masked-image latents)."""
    if mask is None:
        weights = source.new_ones(1, 1, *source.shape[-2:])
    else:
        weights = torch.from_numpy(np.array(mask.convert("L")).astype(np.float32) / 255.0)[None, None]
        if round_mask:
            weights = torch.round(weights)
    masked = torch.lerp(source, source * (1.0 - weights), mask_weight)
    latents = images.encode_batch(model, masked, generator)
    small = torch.nn.functional.interpolate(weights, size=latent_size)
    small = small.expand(latents.shape[0], -1, -1, -1)
    return torch.cat([small, latents], dim=1)


def txt2img(
    model: LoadedModel, batch: int, size: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """A1111's ``txt2img_image_conditioning`` for an inpainting model: grey (0 in -1..1), fully masked."""
    width, height = size
    grey = torch.zeros(batch, 3, height, width)
    return inpainting(model, grey, (height // 8, width // 8), None, True, 1.0, generator)
