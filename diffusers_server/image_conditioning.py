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

instruct-pix2pix (8-channel) checkpoints see 4 more: the init image's latents, the mean of the VAE posterior
(``edit_image_conditioning``, no sampling, no scaling), for img2img only (A1111's txt2img fails on them). With
``image_cfg_scale`` set and not 1 A1111 guides with three predictions (``combine_denoised_for_edit_model``:
prompt + image, negative + image, negative + zeros; ``sampling.denoiser.CFGDenoiser``).
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


def is_edit(model: LoadedModel) -> bool:
    """An instruct-pix2pix checkpoint (A1111's ``cond_stage_key == "edit"``)."""
    return unet_channels(model) == PIX2PIX


def check_supported(model: LoadedModel, title: str, img2img: bool) -> None:
    """400 for a UNet whose extra input channels this engine does not fill here: another width, or an
    instruct-pix2pix checkpoint outside img2img (A1111's txt2img gives it the inpainting conditioning and
    fails)."""
    channels = unet_channels(model)
    if channels in (PLAIN, INPAINTING) or (channels == PIX2PIX and img2img):
        return
    if channels == PIX2PIX:
        raise RequestRefused(
            400,
            f"checkpoint {title} is an instruct-pix2pix model (8-channel UNet): it edits an init image; "
            "send the request to /img2img (A1111's txt2img fails on it)",
        )
    raise RequestRefused(
        400,
        f"checkpoint {title} has a {channels}-channel UNet: only plain (4), instruct-pix2pix (8) and "
        "inpainting (9) checkpoints are supported",
    )


def edit(model: LoadedModel, source: torch.Tensor) -> torch.Tensor:
    """A1111's ``edit_image_conditioning``: the VAE posterior's mean of the processing images (-1..1)."""
    vae = model.pipe.vae
    with torch.inference_mode():
        mean = vae.encode(source.to(vae.device, vae.dtype)).latent_dist.mean
    return torch.as_tensor(mean).float()


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
