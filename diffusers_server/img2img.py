"""img2img and inpainting as A1111 v1.10.1 runs them (``StableDiffusionProcessingImg2Img``).

:func:`plan` checks the img2img fields and decodes the images before the generation lock (a 4xx for what
this engine cannot do, naming the field); :class:`Img2ImgRun` then runs under the lock as txt2img does,
with A1111's ``init``: images flattened and resized (``resize_mode`` 0-3), the mask made binary, inverted,
blurred, cropped for "only masked" (``inpaint_full_res``), the masked area filled (``inpainting_fill``), the
VAE encode, the latent mask; and its ``sample``: noise to the denoising strength's point of the schedule,
the original latents blended back outside the mask at every step and at the end, the original pixels
composited over the result (``overlay_inpaint``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from . import image_conditioning, image_ops, images
from .errors import RequestRefused
from .generation import GenerationContext, Txt2ImgRun, _Conds
from .generation_info import RunFacts
from .sampling import run
from .sampling.denoiser import LatentBlend
from .sampling.noise import ImageNoise
from .sampling.timestep_samplers import SamplingError
from .schemas import Img2ImgRequest
from .validation import PreparedRequest

#: A1111's ``inpainting_fill`` values and their infotext "Masked content" (original adds no key)
FILL_MODES = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
MAX_MASK_BLUR = 128  # A1111's slider stops at 64; a larger blur only costs time
OPT_F = 8


@dataclass
class Img2ImgPlan:
    """The img2img fields of a request, checked, with its images decoded."""

    init_images: list[Image.Image]
    mask: Image.Image | None
    resize_mode: int
    strength: float
    fill: int
    full_res: bool
    padding: int
    invert: bool
    blur: tuple[int, int]
    round_mask: bool
    noise_multiplier: float | None
    warnings: list[str] = field(default_factory=list)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise RequestRefused(400, f"{name} must be {low}..{high} (got {value})")


def plan(req: Img2ImgRequest) -> Img2ImgPlan:
    """The img2img fields checked and the images decoded, before the lock; 4xx naming the field."""
    if req.init_images is None:
        raise RequestRefused(404, "Init image not found")  # A1111's answer
    batch = int(req.batch_size or 1)
    if not 1 <= len(req.init_images) <= max(batch, 1):
        raise RequestRefused(
            400, f"init_images: {len(req.init_images)} image(s); send 1..batch_size ({batch})"
        )
    resize_mode, fill = int(req.resize_mode or 0), int(req.inpainting_fill or 0)
    _check_range("resize_mode", resize_mode, 0, 3)
    _check_range("inpainting_fill", fill, 0, 3)
    if req.denoising_strength is None:  # A1111: a 500 TypeError
        raise RequestRefused(400, "denoising_strength must be 0..1 (got null)")
    strength = float(req.denoising_strength)
    if not 0 <= strength <= 1:
        raise RequestRefused(400, f"denoising_strength must be 0..1 (got {strength})")
    blur_x, blur_y = int(req.mask_blur_x or 0), int(req.mask_blur_y or 0)
    if req.mask_blur is not None:
        blur_x = blur_y = int(req.mask_blur)  # A1111's ``mask_blur`` setter
    _check_range("mask_blur_x", blur_x, 0, MAX_MASK_BLUR)
    _check_range("mask_blur_y", blur_y, 0, MAX_MASK_BLUR)
    padding = int(req.inpaint_full_res_padding or 0)
    _check_range("inpaint_full_res_padding", padding, 0, 4096)
    if req.latent_mask:
        raise RequestRefused(400, "latent_mask (a separate mask for the latents) is not supported")
    mask = image_ops.decode_image(req.mask, "mask") if req.mask else None
    if mask is not None and resize_mode == 3:
        raise RequestRefused(
            400, "resize_mode 3 (latent upscale) with a mask is not supported (A1111 fails on it)"
        )
    multiplier = req.initial_noise_multiplier
    if multiplier is not None and multiplier < 0:
        raise RequestRefused(400, f"initial_noise_multiplier must be >= 0 (got {multiplier})")
    result = Img2ImgPlan(
        init_images=[image_ops.decode_image(x, f"init_images[{i}]") for i, x in enumerate(req.init_images)],
        mask=mask,
        resize_mode=resize_mode,
        strength=strength,
        fill=fill,
        full_res=bool(req.inpaint_full_res),
        padding=padding,
        invert=bool(req.inpainting_mask_invert),
        blur=(blur_x, blur_y),
        round_mask=req.mask_round is not False,
        noise_multiplier=multiplier,
    )
    return result


@dataclass
class _Mask:
    """The processed mask: for the latents (processing size), for the overlay, and the only-masked box."""

    latent: Image.Image
    overlay: Image.Image
    crop: image_ops.Box | None = None


@dataclass
class Inputs:
    """A1111's img2img ``init``: what every ``n_iter`` batch starts from."""

    latents: torch.Tensor
    blend: LatentBlend | None
    overlays: list[Image.Image]
    paste_to: tuple[int, int, int, int] | None
    image_cond: torch.Tensor | None = None


class Img2ImgRun(Txt2ImgRun):
    """txt2img's run with the first pass replaced by A1111's img2img ``init`` and ``sample``."""

    from_images = True

    def __init__(
        self, prepared: PreparedRequest, ctx: GenerationContext, plan: Img2ImgPlan, req: Img2ImgRequest
    ):
        super().__init__(prepared, ctx)
        self.plan, self.req = plan, req
        if len(plan.init_images) > 1:
            self.batch = len(plan.init_images)  # A1111 sets batch_size to the number of images
        self.inputs: Inputs | None = None
        #: A1111 keeps ``image_cfg_scale`` for instruct-pix2pix checkpoints only
        self.image_cfg_scale = req.image_cfg_scale if image_conditioning.is_edit(ctx.model) else None
        if req.image_cfg_scale is not None and self.image_cfg_scale is None:
            prepared.warnings.append(
                "image_cfg_scale: applies to instruct-pix2pix checkpoints only; not used"
            )
        prepared.img2img_params = self._params()

    def parameters(self) -> dict[str, Any]:
        return self.req.echo()

    def _params(self) -> dict[str, Any]:
        """A1111's img2img ``extra_generation_params``, in the order its ``init``/``sample`` add them."""
        plan = self.plan
        params: dict[str, Any] = {"Denoising strength": plan.strength}
        if plan.mask is not None:
            if plan.invert:
                params["Mask mode"] = "Inpaint not masked"
            if plan.blur != (0, 0) and plan.blur[0] == plan.blur[1]:
                params["Mask blur"] = plan.blur[0]
            if plan.full_res and plan.mask.getbbox() is not None:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = plan.padding
            if plan.fill != 1:
                params["Masked content"] = FILL_MODES[plan.fill]
        multiplier = self._noise_multiplier()
        if multiplier != 1.0:
            params["Noise multiplier"] = multiplier
        return params

    def _noise_multiplier(self) -> float:
        multiplier = self.plan.noise_multiplier
        return float(self.ctx.opts["initial_noise_multiplier"] if multiplier is None else multiplier)

    # ---- A1111's init ----

    def _mask(self, width: int, height: int) -> _Mask | None:
        plan = self.plan
        if plan.mask is None:
            return None
        mask = image_ops.binary_mask(plan.mask, plan.round_mask)
        if plan.invert:
            mask = ImageOps.invert(mask)
        if plan.blur != (0, 0):
            mask = image_ops.blur_mask(mask, *plan.blur)
        if not plan.full_res:
            latent = image_ops.resize_image(plan.resize_mode, mask, width, height)
            doubled = np.clip(np.asarray(latent).astype(np.float32) * 2, 0, 255).astype(np.uint8)
            return _Mask(latent, Image.fromarray(doubled))
        box = image_ops.crop_region(mask.convert("L"), plan.padding)
        if box is None:
            return None  # A1111: "mask is blank, switch to img2img mode"
        box = image_ops.expand_crop_region(box, width, height, mask.width, mask.height)
        latent = image_ops.resize_image(2, mask.convert("L").crop(box), width, height)
        return _Mask(latent, mask, box)

    def _prepare_pixels(self, mask: _Mask | None) -> tuple[list[Image.Image], list[Image.Image]]:
        """The images the VAE encodes and, with a mask, the overlays pasted back over the results."""
        plan, (width, height) = self.plan, self.prepared.size
        pixels, overlays = [], []
        for init in plan.init_images:
            image = image_ops.flatten(init, str(self.ctx.opts["img2img_background_color"]))
            if (mask is None or mask.crop is None) and plan.resize_mode != 3:
                image = image_ops.resize_image(plan.resize_mode, image, width, height)
            if mask is not None:
                if mask.overlay.size != image.size:
                    mask.overlay = image_ops.resize_image(plan.resize_mode, mask.overlay, *image.size)
                overlays.append(image_ops.masked_out(image, mask.overlay).convert("RGBA"))
                if mask.crop is not None:
                    image = image_ops.resize_image(2, image.crop(mask.crop), width, height)
                if plan.fill != 1:
                    image = image_ops.fill(image, mask.latent)
            pixels.append(image)
        if len(pixels) == 1:
            pixels, overlays = pixels * self.batch, overlays * self.batch
        return pixels, overlays

    def _inputs(self, facts: RunFacts) -> Inputs:
        plan, model = self.plan, self.ctx.model
        width, height = self.prepared.size
        mask = self._mask(width, height)
        pixels, overlays = self._prepare_pixels(mask)
        latents = images.encode(model, pixels, self.ctx.global_rng)
        if plan.resize_mode == 3:
            size = (height // OPT_F, width // OPT_F)
            latents = torch.nn.functional.interpolate(latents, size=size, mode="bilinear")
        blend, paste_to = None, None
        if mask is not None:
            latents, blend = self._masked_latents(latents, mask, facts)
            x, y = (mask.crop[0], mask.crop[1]) if mask.crop else (0, 0)
            paste_to = (x, y, mask.crop[2] - x, mask.crop[3] - y) if mask.crop else None
        image_cond = self._image_conditioning(pixels, latents, mask)
        return Inputs(latents, blend, overlays, paste_to, image_cond)

    def _masked_latents(
        self, latents: torch.Tensor, mask: _Mask, facts: RunFacts
    ) -> tuple[torch.Tensor, LatentBlend]:
        """The latent mask (bicubic to the latent size, rounded) and the latent fill modes."""
        plan = self.plan
        small = mask.latent.convert("RGB").resize(
            (latents.shape[3], latents.shape[2]), resample=Image.Resampling.BICUBIC
        )
        keep = np.asarray(small, dtype=np.float32)[:, :, 0] / 255
        if plan.round_mask:
            keep = np.around(keep)
        nmask = torch.from_numpy(np.tile(keep[None], (latents.shape[1], 1, 1))).to(latents)
        blend_mask = 1.0 - nmask
        if plan.fill == 2:
            # A1111 draws it at init with the first batch's seeds, for every n_iter batch
            noise = ImageNoise(
                (int(latents.shape[1]), int(latents.shape[2]), int(latents.shape[3])),
                facts.seeds.all_seeds[: self.batch],
                device=torch.device(self.ctx.device),
                source=str(self.ctx.opts["randn_source"]),
                global_rng=self.ctx.global_rng,
            )
            latents = latents * blend_mask + noise.next() * nmask
        elif plan.fill == 3:
            latents = latents * blend_mask
        return latents, LatentBlend(latents, blend_mask, nmask)

    def _image_conditioning(
        self, pixels: list[Image.Image], latents: torch.Tensor, mask: _Mask | None
    ) -> torch.Tensor | None:
        """An inpainting checkpoint's mask and masked-image latents, an instruct-pix2pix one's image latents
        (A1111: the last step of ``init``)."""
        model = self.ctx.model
        edit = image_conditioning.is_edit(model)
        if not edit and not image_conditioning.is_inpainting(model):
            return None
        source = image_conditioning.pixels_tensor(pixels)
        latent_size = (int(latents.shape[2]), int(latents.shape[3]))
        if source.shape[-2] // OPT_F != latent_size[0] or source.shape[-1] // OPT_F != latent_size[1]:
            raise RequestRefused(
                400,
                f"resize_mode 3 with the checkpoint {self.ctx.info.title} "
                f"({image_conditioning.unet_channels(model)}-channel UNet) needs an init image of the output "
                f"size ({self.prepared.size[0]}x{self.prepared.size[1]}); A1111 fails on it",
            )
        if edit:
            return image_conditioning.edit(model, source)
        return image_conditioning.inpainting(
            model,
            source,
            latent_size,
            None if mask is None else mask.latent,
            self.plan.round_mask,
            float(self.ctx.opts["inpainting_mask_weight"]),
            self.ctx.global_rng,
        )

    # ---- A1111's sample, per batch ----

    def _batch(self, it: int, facts: RunFacts, conds: _Conds, guidance: float) -> list[Image.Image]:
        state, prepared = self.ctx.state, self.prepared
        state.job_no, state.sampling_step, state.skipped = it, 0, False
        if self.inputs is None:
            self.inputs = self._inputs(facts)
        inputs = self.inputs
        seeds = facts.seeds.all_seeds[it * self.batch : (it + 1) * self.batch]
        shape = (int(inputs.latents.shape[1]), int(inputs.latents.shape[2]), int(inputs.latents.shape[3]))
        schedule = run.img2img_steps(
            prepared.steps, self.plan.strength, bool(self.ctx.opts["img2img_fix_steps"])
        )
        state.sampling_steps = schedule[1] + 1
        one_pass = self._pass(
            self.sampler, conds.first, guidance, seeds, self._noise(it, facts, shape), prepared.size[::-1]
        )
        one_pass.blend = inputs.blend
        image_cond = inputs.image_cond
        if image_cond is not None:
            one_pass.image_cond = lambda: image_cond
        one_pass.image_cfg_scale = self.image_cfg_scale
        try:
            latents = run.img2img(one_pass, inputs.latents, schedule, self._noise_multiplier())
        except SamplingError as exc:
            raise RequestRefused(400, str(exc)) from exc
        if inputs.blend is not None:
            latents = inputs.blend(latents)
        results = images.decode(self.ctx.model, latents)
        if inputs.overlays and self.ctx.opts["overlay_inpaint"]:
            results = [
                image_ops.apply_overlay(image, inputs.paste_to, inputs.overlays[i])
                for i, image in enumerate(results)
            ]
        return results
