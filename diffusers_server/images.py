"""Between latents and images: the VAE both ways as A1111 runs it, tiling, a response's encoded images."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .models.pipelines import LoadedModel


def decode(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """A1111's ``decode_latent_batch`` and image conversion: one image at a time through the VAE, then
    ``clamp((x + 1) / 2) * 255`` truncated to 8 bits (fp16 VAEs that ask for it are upcast)."""
    vae = model.pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    images: list[Image.Image] = []
    with torch.inference_mode():
        if upcast:
            vae.to(torch.float32)
        try:
            for i in range(latents.shape[0]):
                z = latents[i : i + 1].to(vae.device, vae.dtype) / vae.config.scaling_factor
                decoded = vae.decode(z, return_dict=False)[0][0].float()
                sample = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)
                array = 255.0 * np.moveaxis(sample.cpu().numpy(), 0, 2)
                images.append(Image.fromarray(array.astype(np.uint8)))
        finally:
            if upcast:
                vae.to(dtype)
    return images


def encode(model: LoadedModel, images: list[Image.Image], generator: torch.Generator) -> torch.Tensor:
    """A1111's ``images_tensor_to_samples``: each image through the VAE encoder, the posterior sampled
    from ``generator``, A1111's global CPU generator (``sampling.noise.global_generator``)."""
    vae = model.pipe.vae
    latents = []
    for image in images:
        array = np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0)
        pixels = torch.from_numpy(array)[None].to(vae.device, vae.dtype) * 2 - 1
        latents.append(_sample_latents(vae, pixels, generator))
    return torch.cat(latents).float()


def encode_batch(model: LoadedModel, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A1111's ``get_first_stage_encoding(encode_first_stage(x))`` of a ``[B, 3, H, W]`` batch in -1..1 in
    one VAE call and one posterior draw (the inpainting conditioning encodes so)."""
    vae = model.pipe.vae
    return _sample_latents(vae, pixels.to(vae.device, vae.dtype), generator).float()


def _sample_latents(vae: Any, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The VAE posterior sampled from ``generator`` on the CPU, scaled to the UNet's latent space."""
    dist = vae.encode(pixels).latent_dist
    eps = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
    return torch.as_tensor((dist.mean + dist.std * eps) * vae.config.scaling_factor)


@contextlib.contextmanager
def circular_padding(model: LoadedModel, enabled: bool) -> Iterator[None]:
    """A1111's ``tiling``: every Conv2d of the UNet and the VAE pads circularly for the request."""
    layers = [
        m for part in (model.pipe.unet, model.pipe.vae) for m in part.modules() if type(m) is torch.nn.Conv2d
    ]
    if enabled:
        for layer in layers:
            layer.padding_mode = "circular"
    try:
        yield
    finally:
        if enabled:
            for layer in layers:
                layer.padding_mode = "zeros"


def encode_image(image: Image.Image, text: str, opts: dict[str, Any]) -> str:
    """Base64 in ``samples_format``; infotext in a PNG ``parameters`` tEXt chunk, or JPEG/WebP EXIF."""
    fmt = str(opts["samples_format"]).lower()
    buffer = io.BytesIO()
    with_info = bool(opts["enable_pnginfo"])
    if fmt == "png":
        png = PngInfo()
        if with_info:
            png.add_text("parameters", text)
        image.save(buffer, format="PNG", pnginfo=png)
    else:
        exif = Image.Exif()
        if with_info:
            exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
        kind = "WEBP" if fmt == "webp" else "JPEG"
        extra = {"lossless": True} if kind == "WEBP" and opts["webp_lossless"] else {}
        image.convert("RGB").save(buffer, format=kind, quality=int(opts["jpeg_quality"]), exif=exif, **extra)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
