"""One txt2img under the generation lock: prompts encoded, each batch sampled (and hires-fixed), images out.

A1111 v1.10's ``process_images`` order: the hires prompts are encoded before the first pass's (so the first
pass's LoRAs are the active ones while it samples), each ``n_iter`` batch takes its slice of the seeds, and
``/interrupt`` or ``/skip`` ends a batch at the next step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import hires, image_conditioning, images, infotext
from .cond_schedule import BatchConds
from .conditioning import EncodeSettings, build_conds
from .errors import RequestRefused
from .generation_info import RunFacts, Seeds, image_params, info_json, infotext_params, network_hashes
from .generation_info import sampling_options as sampling_options_for
from .inventory import ModelInventory
from .lora_adapters import LoraUse, apply_loras, same_loras
from .models.files import CheckpointInfo
from .models.pipelines import LoadedModel
from .prompt_syntax import PromptSyntaxError, extract_networks
from .prompts import PromptChunker
from .samplers import ResolvedSampler, resolve
from .sampling import run
from .sampling.denoiser import UNetModel
from .sampling.noise import ImageNoise, global_generator
from .sampling.timestep_samplers import SamplingError
from .state import GenerationState
from .tokenizer import clip_tokenizers
from .validation import HiresPlan, PreparedRequest


@dataclass(frozen=True)
class GenerationContext:
    """What a generation reads besides the request: the loaded model, options, folders and shared state."""

    model: LoadedModel
    info: CheckpointInfo
    opts: dict[str, Any]
    inventory: ModelInventory
    state: GenerationState
    device: str
    work_dir: Path
    clip_tokenizer: Path | None
    #: A1111's global CPU generator (``sampling.noise.global_generator``), kept across requests
    global_rng: torch.Generator = field(default_factory=global_generator)


@dataclass
class _Conds:
    first: BatchConds
    hires: BatchConds | None
    embeddings: list[str] = field(default_factory=list)


class _PromptEncoder:
    """A1111's prompt handling for the loaded model: its tokenizers, the embeddings that fit it, options."""

    def __init__(self, ctx: GenerationContext, batch: int):
        opts, model = ctx.opts, ctx.model
        self.ctx, self.batch = ctx, batch
        tokenizers = clip_tokenizers(ctx.clip_tokenizer)
        self.chunker = PromptChunker(
            [tokenizers["transformers"], *([tokenizers["open_clip"]] if model.kind == "sdxl" else [])],
            ctx.inventory.embeddings_for(model.text_widths),
            int(opts["comma_padding_backtrack"]),
            str(opts["emphasis"]),
        )
        self.settings = EncodeSettings(
            int(opts["CLIP_stop_at_last_layers"]),
            bool(opts["sdxl_clip_l_skip"]),
            str(opts["emphasis"]),
            bool(opts["use_old_scheduling"]),
        )

    def encode(
        self, prompt: str, negative: str, loras: list[LoraUse], total: int, hires_steps: int | None = None
    ) -> tuple[BatchConds, list[str]]:
        """The batch's conditioning with ``loras`` active; also the names of the embeddings it used."""
        apply_loras(self.ctx.model, loras, self.ctx.work_dir)
        # Only the positive prompt's tags are extra networks; A1111 encodes the negative's as text.
        prompts = [extract_networks(prompt)[0]] * self.batch
        negatives = [negative] * self.batch
        try:
            return build_conds(
                self.ctx.model,
                self.chunker,
                prompts,
                negatives,
                self.settings,
                steps=total,
                hires_steps=hires_steps,
            )
        except PromptSyntaxError as exc:
            raise RequestRefused(400, str(exc)) from exc


class Txt2ImgRun:
    """Runs a prepared request on the loaded model and builds A1111's txt2img response."""

    #: whether the run starts from init images (instruct-pix2pix checkpoints need them)
    from_images = False
    #: instruct-pix2pix's image guidance (img2img only; "Image CFG scale" in the infotext)
    image_cfg_scale: float | None = None

    def __init__(self, prepared: PreparedRequest, ctx: GenerationContext):
        self.prepared, self.ctx = prepared, ctx
        req, opts = prepared.req, ctx.opts
        self.sampler = resolve(req.sampler_name or req.sampler_index, req.scheduler)
        self.batch, self.n_iter = int(req.batch_size or 1), int(req.n_iter or 1)
        self.sampling = sampling_options_for(req, opts)
        self.sampler_extra: dict[str, Any] = {}
        self.crop = (int(opts["sdxl_crop_top"]), int(opts["sdxl_crop_left"]))

    def execute(self) -> dict[str, Any]:
        ctx, prepared = self.ctx, self.prepared
        self._check_hires_checkpoint()
        self._check_unet_inputs()
        conds = self._encode_prompts()
        vae_path = ctx.model.vae_path
        tiling = bool(ctx.opts["tiling"]) if prepared.req.tiling is None else bool(prepared.req.tiling)
        facts = RunFacts(
            prepared=prepared,
            info=ctx.info,
            sampler=self.sampler,
            seeds=Seeds.of(prepared.req),
            vae_path=vae_path,
            vae_hash=ctx.inventory.hashes.sha256(vae_path)[:10] if vae_path else None,
            clip_stop=int(ctx.opts["CLIP_stop_at_last_layers"]),
            tiling=tiling,
            ensd=int(ctx.opts["eta_noise_seed_delta"] or 0),
            network_hashes=network_hashes(
                ctx.opts, prepared, ctx.inventory.hashes, ctx.inventory.embedding_files, conds.embeddings
            ),
            inpainting_conditioning=image_conditioning.is_inpainting(ctx.model),
            image_cfg_scale=self.image_cfg_scale,
        )
        params = infotext_params(facts, ctx.opts, self.sampling)
        encoded: list[str] = []
        infotexts: list[str] = []
        ctx.state.sampling_steps = prepared.steps
        with images.circular_padding(ctx.model, tiling), torch.inference_mode():
            for it in range(self.n_iter):
                if ctx.state.interrupted:
                    break
                for index, image in enumerate(self._batch(it, facts, conds, float(params["CFG scale"]))):
                    n = it * self.batch + index
                    image_info = image_params(
                        params, facts, n, self.sampler_extra, bool(ctx.opts["add_version_to_infotext"])
                    )
                    text = infotext.create(
                        prepared.req.prompt or "", prepared.req.negative_prompt or "", image_info
                    )
                    infotexts.append(text)
                    if prepared.req.send_images is not False:
                        encoded.append(images.encode_image(image, text, ctx.opts))
        info = info_json(
            facts, params, self.sampler_extra, infotexts, ctx.state.job_timestamp, ctx.state.interrupted
        )
        return {"images": encoded, "parameters": self.parameters(), "info": json.dumps(info)}

    def parameters(self) -> dict[str, Any]:
        """The response's ``parameters``: the request as received."""
        return self.prepared.req.model_dump()

    def _check_hires_checkpoint(self) -> None:
        hr, info = self.prepared.hires, self.ctx.info
        if hr is not None and hr.checkpoint is not None and hr.checkpoint.filename != info.filename:
            raise RequestRefused(
                400,
                f"hr_checkpoint_name {self.prepared.req.hr_checkpoint_name!r} is not supported: this engine "
                f"runs the hires pass on the request's checkpoint ({info.title}); "
                f"use null or {hires.SAME_CHECKPOINT!r}",
            )

    def _check_unet_inputs(self) -> None:
        """instruct-pix2pix is refused outside img2img; so is the hires fix on an inpainting checkpoint (A1111
        conditions its second pass on the first pass's size; not followed here)."""
        model, info = self.ctx.model, self.ctx.info
        image_conditioning.check_supported(model, info.title, self.from_images)
        if self.prepared.hires is not None and image_conditioning.is_inpainting(model):
            raise RequestRefused(
                400,
                f"enable_hr with the inpainting checkpoint {info.title} (9-channel UNet) is not supported "
                "by this engine; send enable_hr false or use a plain checkpoint",
            )

    # ---- prompts ----

    def _encode_prompts(self) -> _Conds:
        """The first pass's conditioning and, with hires, the second pass's (encoded first, as A1111 does)."""
        prepared, hr = self.prepared, self.prepared.hires
        # A1111 measures prompt schedules in the sampler's total steps (second-order samplers: twice).
        first_total = self.sampler.sampler.total_steps(prepared.steps)
        encoder = _PromptEncoder(self.ctx, self.batch)
        hr_conds: BatchConds | None = None
        hr_used: list[str] = []
        if hr is not None:
            # A1111 encodes the hires prompts with the first pass's step count as the base and the hires
            # pass's as ``hires_steps`` (its prompt-editing timeline), with the hires LoRAs active.
            hr_total = hr.sampler.sampler.total_steps(hr.steps)
            hr_conds, hr_used = encoder.encode(hr.prompt, hr.negative, hr.loras, first_total, hr_total)
        conds, used = encoder.encode(prepared.prompt, prepared.negative, prepared.loras, first_total)
        return _Conds(conds, hr_conds, sorted(set(used) | set(hr_used)))

    # ---- sampling ----

    def _batch(self, it: int, facts: RunFacts, conds: _Conds, guidance: float) -> list[Image.Image]:
        """Batch ``it`` of ``n_iter``: the first pass, then (with hires) the second, decoded to images."""
        state, prepared = self.ctx.state, self.prepared
        passes = 2 if prepared.hires is not None else 1
        state.job_no, state.sampling_step, state.skipped = it * passes, 0, False
        state.sampling_steps = prepared.steps
        seeds = facts.seeds.all_seeds[it * self.batch : (it + 1) * self.batch]

        def noise_for(shape: tuple[int, int, int]) -> ImageNoise:
            return self._noise(it, facts, shape)

        width, height = prepared.size
        model = self.ctx.model
        first_pass = self._pass(
            self.sampler,
            conds.first,
            guidance,
            seeds,
            noise_for((int(model.pipe.unet.config.out_channels), height // 8, width // 8)),
            (height, width),
        )
        if image_conditioning.is_inpainting(model):
            rng, size = self.ctx.global_rng, (width, height)
            first_pass.image_cond = lambda: image_conditioning.txt2img(model, len(seeds), size, rng)
        try:
            latents = run.txt2img(first_pass, prepared.steps)
            if prepared.hires is not None and conds.hires is not None:
                return self._hires_pass(prepared.hires, latents, conds.hires, seeds, guidance, noise_for)
            return images.decode(self.ctx.model, latents)
        except SamplingError as exc:
            raise RequestRefused(400, str(exc)) from exc

    def _noise(self, it: int, facts: RunFacts, shape: tuple[int, int, int]) -> ImageNoise:
        """A1111's ``ImageRNG`` for batch ``it`` of ``n_iter``."""
        batch = slice(it * self.batch, (it + 1) * self.batch)
        return ImageNoise(
            shape,
            facts.seeds.all_seeds[batch],
            device=torch.device(self.ctx.device),
            source=str(self.ctx.opts["randn_source"]),
            subseeds=facts.seeds.all_subseeds[batch],
            subseed_strength=facts.seeds.variation,
            seed_resize_from_h=facts.seeds.resize_h,
            seed_resize_from_w=facts.seeds.resize_w,
            eta_noise_seed_delta=facts.ensd,
            global_rng=self.ctx.global_rng,
        )

    def _pass(
        self,
        sampler: ResolvedSampler,
        conds: BatchConds,
        guidance: float,
        seeds: list[int],
        noise: ImageNoise,
        size: tuple[int, int],
    ) -> run.Pass:
        model, state = self.ctx.model, self.ctx.state
        height, width = size

        def on_step(i: int) -> None:
            state.sampling_step = i + 1

        def should_stop() -> bool:
            return state.interrupted or state.skipped

        return run.Pass(
            sampler=sampler,
            conds=conds,
            cfg_scale=guidance,
            seeds=seeds,
            noise=noise,
            unet=UNetModel(model.pipe.unet, model.kind == "sdxl", (height, width, *self.crop, height, width)),
            alphas_cumprod=model.alphas_cumprod,
            options=self.sampling,
            should_stop=should_stop,
            on_step=on_step,
            extra_params=self.sampler_extra,
        )

    def _hires_pass(
        self,
        hr: HiresPlan,
        first: torch.Tensor,
        conds: BatchConds,
        seeds: list[int],
        guidance: float,
        noise_for: Callable[[tuple[int, int, int]], ImageNoise],
    ) -> list[Image.Image]:
        """A1111 ``sample_hr_pass``: upscale the first pass (latents, or decoded images re-encoded by the
        VAE), crop, noise to the img2img start and denoise ``hr.steps`` steps.

        Returns the first pass's images when interrupted/skipped before it (A1111 returns them too).
        """
        model, state = self.ctx.model, self.ctx.state
        if state.interrupted or state.skipped:
            return images.decode(model, first)
        state.job_no += 1
        state.sampling_step, state.sampling_steps = 0, hr.steps
        if hr.latent:
            upscaled = hires.upscale_latents(first, hr.upscaler, hr.target)
        else:
            upscaled_images = [
                hires.upscale_image(image, hr.upscaler, hr.target) for image in images.decode(model, first)
            ]
            upscaled = images.encode(model, upscaled_images, self.ctx.global_rng)
        init = hires.crop_latents(upscaled, hr.target)
        if hr.denoising_strength == 0:
            return images.decode(model, init)
        h_lat, w_lat = init.shape[-2:]
        noise = noise_for((int(init.shape[1]), int(h_lat), int(w_lat)))
        second = self._pass(
            hr.sampler, conds, guidance, seeds, noise, (hr.target.upscale_y, hr.target.upscale_x)
        )
        swap = not same_loras(hr.loras, self.prepared.loras)
        if swap:
            apply_loras(model, hr.loras, self.ctx.work_dir)
        try:
            latents = run.img2img(second, init, run.img2img_steps(hr.steps, hr.denoising_strength))
        finally:
            if swap:
                apply_loras(model, self.prepared.loras, self.ctx.work_dir)
        return images.decode(model, latents)
