"""The generation engine: model folders, the loaded pipeline, options and A1111-compatible txt2img."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import random
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DPMSolverSDEScheduler
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import load_file

from . import __version__, hires, infotext, options
from .conditioning import EncodeSettings, pipeline_kwargs
from .config import ServerConfig
from .models import files
from .models.files import CheckpointInfo, HashCache, LoraInfo
from .models.pipelines import LoadedModel, ModelLoadError, Runtime, load_checkpoint, load_vae
from .prompt_syntax import NetworkTag, PromptSyntaxError, extract_networks, lora_requests, strip_comments
from .prompts import Embedding, PromptChunker
from .samplers import ResolvedSampler, SamplerError, requested_schedule, resolve
from .schemas import Txt2ImgRequest
from .state import FifoLock, JobState
from .tokenizer import clip_tokenizers

log = logging.getLogger(__name__)

VERSION_TEXT = f"diffusers-server-{__version__}"
MAX_SIDE = 4096
MAX_IMAGES = 64


class EngineError(Exception):
    """A caller-facing error with an HTTP status; rendered in A1111's error shape."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


LoraUse = tuple[LoraInfo, float, float]


@dataclass
class HiresPlan:
    """The validated hires-fix (``enable_hr``) part of a request."""

    target: hires.HiresTarget
    upscaler: str
    steps: int
    denoising_strength: float
    sampler: ResolvedSampler
    prompt: str
    negative: str
    loras: list[LoraUse]
    checkpoint: CheckpointInfo | None
    # "Hires ..." infotext keys known before generation, in A1111's order (None = left out).
    params: dict[str, Any]

    @property
    def latent(self) -> bool:
        return self.upscaler in hires.LATENT_UPSCALE_MODES


@dataclass
class Job:
    """One txt2img request after validation: everything the locked section needs."""

    req: Txt2ImgRequest
    prompt: str
    negative: str
    loras: list[LoraUse]
    overrides: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    hires: HiresPlan | None = None


_HR_CALLABLES = ("Hires prompt", "Hires negative prompt")


def _lora_key(loras: list[LoraUse]) -> list[tuple[str, float, float]]:
    return [(lo.name, te, unet) for lo, te, unet in loras]


def _random_seed(value: int | None) -> int:
    return random.randrange(4294967294) if value is None or value == -1 else int(value)


def _parse_embedding(file: Path) -> dict[int, torch.Tensor]:
    """A1111 embeddings: ``emb_params`` (SD1), ``clip_l``/``clip_g`` (SDXL) or ``string_to_param`` (.pt)."""
    if file.suffix.lower() == ".safetensors":
        data: dict[str, Any] = load_file(str(file))
    else:
        data = torch.load(str(file), map_location="cpu", weights_only=True)
    if "string_to_param" in data:
        data = {"emb_params": next(iter(data["string_to_param"].values()))}
    tensors = [v for k, v in data.items() if k in {"emb_params", "clip_l", "clip_g"}]
    if not tensors and len(data) == 1:
        tensors = list(data.values())
    if not tensors:
        raise ValueError(f"no embedding vectors in {file.name}")
    return {int(t.shape[-1]): t.reshape(-1, t.shape[-1]).float() for t in tensors}


class Engine:
    """Owns the model folders, the loaded pipeline and the options; a FIFO lock serialises generation."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.runtime = Runtime.detect(force_cpu=config.force_cpu)
        self.hashes = HashCache(config.hash_cache)
        self.skeleton_root = Path(tempfile.mkdtemp(prefix="diffusers-server-skeletons-"))
        self.lock = FifoLock()
        self.state = JobState()
        self.options: dict[str, Any] = dict(options.DEFAULTS)
        self.model: LoadedModel | None = None
        self.model_info: CheckpointInfo | None = None
        self.load_error: str | None = None
        self.checkpoints: list[CheckpointInfo] = []
        self.loras: dict[str, LoraInfo] = {}
        self.embedding_files: dict[str, Path] = {}
        self.embeddings: dict[str, dict[int, torch.Tensor]] = {}
        self.embedding_errors: dict[str, str] = {}
        self.vaes: dict[str, Path] = {}
        self.refresh_all()

    # ---- folders ----

    def refresh_all(self) -> None:
        self.refresh_checkpoints()
        self.refresh_loras()
        self.refresh_embeddings()
        self.refresh_vae()

    def refresh_checkpoints(self) -> None:
        root = self.config.checkpoints
        self.checkpoints = [
            CheckpointInfo.from_file(p, root, self.hashes) for p in files.scan(root, files.CHECKPOINT_EXTS)
        ]
        log.info("%d checkpoint(s) in %s", len(self.checkpoints), root)

    def refresh_loras(self) -> None:
        infos = [LoraInfo.from_file(p) for p in files.scan(self.config.loras, files.LORA_EXTS)]
        self.loras = {info.name: info for info in infos}
        for info in infos:
            self.loras.setdefault(info.alias, info)

    def refresh_embeddings(self) -> None:
        self.embedding_files = {p.stem: p for p in files.scan(self.config.embeddings, files.EMBEDDING_EXTS)}
        self.embeddings, self.embedding_errors = {}, {}
        for name, path in self.embedding_files.items():
            try:
                self.embeddings[name] = _parse_embedding(path)
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                self.embedding_errors[name] = str(exc)
                log.warning("skipping embedding %s: %s", path, exc)

    def refresh_vae(self) -> None:
        self.vaes = {p.name: p for p in files.scan(self.config.vaes, files.VAE_EXTS)}

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        """Any A1111 alias (title, name, stem, model_name, shorthash, sha256, old hash); else 404."""
        for info in self.checkpoints:
            if name in info.aliases:
                return info
        titles = ", ".join(i.title for i in self.checkpoints) or "(none)"
        raise EngineError(404, f"checkpoint {name!r} not found; available: {titles}")

    # ---- model loading ----

    def load_default(self) -> None:
        """Load the configured (or first) checkpoint; runs in a background thread at start, like A1111."""
        with self.lock.hold():
            try:
                if not self.checkpoints:
                    raise EngineError(503, f"no checkpoints in {self.config.checkpoints}")
                wanted = self.config.ckpt or self.checkpoints[0].title
                info = self.find_checkpoint(wanted)
                self._ensure_model(info, str(self.options["sd_vae"]))
                self.options["sd_model_checkpoint"] = info.title
            except (EngineError, ModelLoadError) as exc:
                self.load_error = str(exc)
                log.error("initial model load failed: %s", exc)

    def _ensure_model(self, info: CheckpointInfo, vae_choice: str) -> LoadedModel:
        if self.model is None or self.model_info is None or self.model_info.filename != info.filename:
            self.model = None
            self.model = load_checkpoint(
                info.filename, self.runtime, self.skeleton_root, self.config.clip_tokenizer
            )
            self.model_info = info
            self.load_error = None
        self._apply_vae(self.model, vae_choice)
        return self.model

    def _vae_path(self, choice: str) -> Path | None:
        if choice in ("Automatic", "None", "", None):
            return None
        if choice not in self.vaes:
            raise EngineError(
                404, f"VAE {choice!r} not found; available: Automatic, None, {', '.join(self.vaes)}"
            )
        return self.vaes[choice]

    def _apply_vae(self, model: LoadedModel, choice: str) -> None:
        path = self._vae_path(choice)
        if path == model.vae_path:
            return
        model.pipe.vae = model.original_vae if path is None else load_vae(path, model.skeleton, self.runtime)
        model.vae_path = path

    # ---- options ----

    def get_options(self) -> dict[str, Any]:
        return dict(self.options)

    def set_options(self, values: dict[str, Any]) -> list[str]:
        """``POST /options``: validated; a checkpoint/VAE change loads at once (waiting for running jobs)."""
        try:
            notes = options.validate(values)
        except options.OptionError as exc:
            raise EngineError(400, str(exc)) from exc
        with self.lock.hold():
            ckpt = values.get("sd_model_checkpoint")
            info = self.find_checkpoint(str(ckpt)) if ckpt is not None else self.model_info
            vae = str(values.get("sd_vae", self.options["sd_vae"]))
            self._vae_path(vae)
            if info is not None:
                try:
                    self._ensure_model(info, vae)
                except ModelLoadError as exc:
                    raise EngineError(400, str(exc)) from exc
            self.options.update(values)
            if info is not None:
                self.options["sd_model_checkpoint"] = info.title
        for note in notes:
            log.info("POST /options: %s", note)
        return notes

    # ---- listings ----

    def embeddings_listing(self) -> dict[str, Any]:
        widths = set(self.model.text_widths) if self.model else None
        loaded: dict[str, Any] = {}
        skipped: dict[str, Any] = {}
        for name, vectors in self.embeddings.items():
            first = next(iter(vectors.values()))
            item = {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": int(first.shape[-1]),
                "vectors": int(first.shape[0]),
            }
            (loaded if widths is None or widths <= vectors.keys() else skipped)[name] = item
        return {"loaded": loaded, "skipped": skipped}

    # ---- txt2img ----

    def prepare(self, req: Txt2ImgRequest) -> Job:
        """Validate before taking the lock; 4xx for anything this engine cannot honour."""
        warnings: list[str] = []

        def refuse(condition: object, message: str, status: int = 400) -> None:
            if condition:
                raise EngineError(status, message)

        refuse(req.script_name, f"Script '{req.script_name}' not found", 422)
        for title in req.alwayson_scripts or {}:
            refuse(True, f"always on script {title} not found", 422)
        refuse(req.styles, f"style(s) {req.styles} not found: this engine has no prompt styles")
        refuse(req.restore_faces, "restore_faces is not supported by this engine (no face restorers)")
        refuse(req.tiling, "tiling is not supported by this engine")
        refuse((req.subseed_strength or 0) > 0, "subseed_strength > 0 (variation seeds) is not supported")
        refuse(
            (req.seed_resize_from_w or 0) > 0 or (req.seed_resize_from_h or 0) > 0,
            "seed_resize_from_w/h is not supported",
        )
        refuse(
            req.refiner_checkpoint not in (None, "", "None", "none"), "refiner_checkpoint is not supported"
        )
        refuse(req.firstpass_image, "firstpass_image is not supported")
        refuse(req.infotext, "infotext (filling fields from a parameters text) is not supported")
        refuse((req.s_churn or 0) > 0, "s_churn > 0 is not supported by this engine")
        refuse(
            req.firstphase_width or req.firstphase_height,
            "firstphase_width/height (legacy hires) not supported",
        )
        width, height = int(req.width or 512), int(req.height or 512)
        for name, value in (("width", width), ("height", height)):
            refuse(
                value < 8 or value > MAX_SIDE or value % 8, f"{name} must be a multiple of 8 in 8..{MAX_SIDE}"
            )
        steps, batch, n_iter = int(req.steps or 50), int(req.batch_size or 1), int(req.n_iter or 1)
        refuse(steps < 1 or steps > 1000, "steps must be 1..1000")
        refuse(
            batch < 1 or n_iter < 1 or batch * n_iter > MAX_IMAGES,
            f"batch_size*n_iter must be 1..{MAX_IMAGES}",
        )
        try:
            resolve(req.sampler_name or req.sampler_index, req.scheduler)
        except SamplerError as exc:
            raise EngineError(404, str(exc)) from exc
        overrides = dict(req.override_settings or {})
        try:
            warnings += options.validate(overrides)
        except options.OptionError as exc:
            raise EngineError(400, f"override_settings: {exc}") from exc
        if "sd_model_checkpoint" in overrides:
            self.find_checkpoint(str(overrides["sd_model_checkpoint"]))
        if "sd_vae" in overrides:
            self._vae_path(str(overrides["sd_vae"]))
        for name in ("eta", "s_min_uncond", "s_tmax", "s_tmin", "s_noise"):
            if getattr(req, name) is not None and name != "eta":
                warnings.append(f"{name} is accepted but not applied by this engine")
        if req.eta is not None and "DDIM" not in str(req.sampler_name or req.sampler_index):
            warnings.append("eta is only applied to DDIM by this engine")
        if req.save_images:
            warnings.append("save_images: this engine does not save files or build grids")
        if not req.enable_hr and (
            req.hr_checkpoint_name or req.hr_sampler_name or req.hr_prompt or req.hr_negative_prompt
        ):
            warnings.append("hr_* fields are ignored because enable_hr is false")

        comments = (
            bool(self.options.get("enable_prompt_comments", True))
            if "enable_prompt_comments" not in overrides
            else bool(overrides["enable_prompt_comments"])
        )
        prompt = strip_comments(req.prompt or "") if comments else req.prompt or ""
        negative = strip_comments(req.negative_prompt or "") if comments else req.negative_prompt or ""
        # Only the positive prompt's tags are extra networks; A1111 encodes the negative's as text.
        _, tags = extract_networks(prompt)
        loras = self._resolve_loras(tags, warnings)
        if req.disable_extra_networks and loras:
            warnings.append("disable_extra_networks: LoRA tags were not applied")
            loras = []
        job = Job(req, prompt, negative, loras, overrides, warnings)
        if req.enable_hr:
            job.hires = self._prepare_hires(job, width, height, steps, comments)
        return job

    def _resolve_loras(self, tags: list[NetworkTag], warnings: list[str]) -> list[LoraUse]:
        for tag in tags:
            if tag.kind not in ("lora", "lyco"):
                raise EngineError(400, f"extra network <{tag.kind}:...> is not supported (only lora/lyco)")
        try:
            requests = lora_requests(tags)
        except PromptSyntaxError as exc:
            # A1111's Lora extension fails on the whole list: it generates with none of the prompt's LoRAs.
            warnings.append(f"{exc}: as A1111, none of the prompt's LoRAs were applied")
            return []
        loras: list[LoraUse] = []
        for request in requests:
            if request.name not in self.loras:
                self.refresh_loras()
            if request.name not in self.loras:
                names = ", ".join(sorted({i.name for i in self.loras.values()})) or "(none)"
                raise EngineError(404, f"LoRA {request.name!r} not found; available: {names}")
            if request.dyn is not None:
                warnings.append(f"{request.tag}: dyn={request.dyn} is not applied by this engine")
            loras.append((self.loras[request.name], request.te, request.unet))
        return loras

    def _prepare_hires(self, job: Job, width: int, height: int, steps: int, comments: bool) -> HiresPlan:
        """Validate ``hr_*`` like A1111 (``StableDiffusionProcessingTxt2Img.init``), with 4xx, not 500."""
        req = job.req
        if req.denoising_strength is None:
            raise EngineError(
                400, "enable_hr needs denoising_strength (0..1, the second pass's strength); it was not given"
            )
        strength = float(req.denoising_strength)
        if not 0 <= strength <= 1:
            raise EngineError(400, f"denoising_strength must be 0..1 (got {strength})")
        upscaler = req.hr_upscaler or hires.DEFAULT_UPSCALER
        if upscaler not in hires.valid_upscalers():
            raise EngineError(
                404, f"hr_upscaler {upscaler!r} not found; available: {', '.join(hires.valid_upscalers())}"
            )
        scale, rx, ry = float(req.hr_scale or 0), int(req.hr_resize_x or 0), int(req.hr_resize_y or 0)
        if rx < 0 or ry < 0:
            raise EngineError(400, "hr_resize_x/hr_resize_y must be >= 0")
        if rx == 0 and ry == 0 and scale <= 0:
            raise EngineError(400, "hr_scale must be > 0 (or give hr_resize_x/hr_resize_y)")
        target = hires.target(width, height, scale, rx, ry)
        hr_w, hr_h = target.size
        if min(hr_w, hr_h) < 8 or max(target.upscale_x, target.upscale_y) > MAX_SIDE:
            raise EngineError(
                400, f"hires size {target.upscale_x}x{target.upscale_y} is outside 8..{MAX_SIDE} per side"
            )
        hr_steps = int(req.hr_second_pass_steps or 0) or steps
        if not 1 <= hr_steps <= 1000:
            raise EngineError(400, "hr_second_pass_steps must be 0 (same as steps) or 1..1000")
        main_name = req.sampler_name or req.sampler_index
        first = resolve(main_name, req.scheduler)
        hr_name = req.hr_sampler_name if req.hr_sampler_name not in ("", hires.SAME_SAMPLER) else None
        hr_schedule = req.hr_scheduler if req.hr_scheduler not in ("", hires.SAME_SCHEDULER) else None
        try:
            if hr_name is None and hr_schedule is None:
                sampler = first
            else:
                # A1111: hr_sampler_name null -> the first pass's sampler; hr_scheduler null -> its scheduler.
                sampler = resolve(
                    hr_name or main_name, hr_schedule or requested_schedule(main_name, req.scheduler)
                )
        except SamplerError as exc:
            raise EngineError(404, f"hires pass: {exc}") from exc
        checkpoint = None
        if req.hr_checkpoint_name not in (None, "", hires.SAME_CHECKPOINT):
            checkpoint = self.find_checkpoint(str(req.hr_checkpoint_name))
        hr_prompt = req.hr_prompt or ""
        hr_negative = req.hr_negative_prompt or ""
        if comments:
            hr_prompt, hr_negative = strip_comments(hr_prompt), strip_comments(hr_negative)
        hr_prompt, hr_negative = hr_prompt or job.prompt, hr_negative or job.negative
        _, hr_tags = extract_networks(hr_prompt)
        loras = [] if req.disable_extra_networks else self._resolve_loras(hr_tags, job.warnings)
        params: dict[str, Any] = {
            "Hires checkpoint": (
                f"{checkpoint.name_for_extra} [{checkpoint.shorthash}]" if checkpoint else None
            ),
            "Hires sampler": sampler.sampler.name if sampler.sampler.name != first.sampler.name else None,
            "Hires prompt": hr_prompt if hr_prompt != job.prompt else None,
            "Hires negative prompt": hr_negative if hr_negative != job.negative else None,
            "Hires schedule type": (
                sampler.schedule.label if sampler.schedule.label != first.schedule.label else None
            ),
        }
        if rx == 0 and ry == 0:
            params["Hires upscale"] = req.hr_scale
        else:
            params["Hires resize"] = f"{rx}x{ry}"
        params["Hires steps"] = req.hr_second_pass_steps or None
        params["Hires upscaler"] = req.hr_upscaler
        return HiresPlan(
            target, upscaler, hr_steps, strength, sampler, hr_prompt, hr_negative, loras, checkpoint, params
        )

    def txt2img(self, req: Txt2ImgRequest) -> dict[str, Any]:
        job = self.prepare(req)
        for warning in job.warnings:
            log.warning("txt2img: %s", warning)
        with self.lock.hold():
            saved = {k: self.options[k] for k in job.overrides}
            # Like A1111, hires counts two jobs per batch (first pass, second pass).
            self.state.begin("txt2img", int(req.n_iter or 1) * (2 if job.hires else 1))
            try:
                self.options.update(job.overrides)
                return self._generate(job)
            finally:
                self.state.end()
                if req.override_settings_restore_afterwards is not False:
                    self.options.update(saved)

    def _generate(self, job: Job) -> dict[str, Any]:
        req, opts = job.req, self.options
        name = opts.get("sd_model_checkpoint") or (self.model_info.title if self.model_info else None)
        if name is None:
            raise EngineError(503, self.load_error or "no checkpoint loaded")
        try:
            model = self._ensure_model(self.find_checkpoint(str(name)), str(opts["sd_vae"]))
        except ModelLoadError as exc:
            raise EngineError(400, str(exc)) from exc
        info = self.model_info
        assert info is not None
        # A1111 stores the loaded model's title, whatever alias was sent.
        opts["sd_model_checkpoint"] = info.title
        pipe = model.pipe
        sampler = resolve(req.sampler_name or req.sampler_index, req.scheduler)
        pipe.scheduler = sampler.build(model.scheduler_config)
        hr = job.hires
        if hr is not None and hr.checkpoint is not None and hr.checkpoint.filename != info.filename:
            raise EngineError(
                400,
                f"hr_checkpoint_name {req.hr_checkpoint_name!r} is not supported: this engine runs the hires "
                f"pass on the request's checkpoint ({info.title}); use null or {hires.SAME_CHECKPOINT!r}",
            )

        embeddings = {
            n: Embedding(n, v) for n, v in self.embeddings.items() if set(model.text_widths) <= v.keys()
        }
        tokenizers = clip_tokenizers(self.config.clip_tokenizer)
        chunker = PromptChunker(
            [tokenizers["transformers"], *([tokenizers["open_clip"]] if model.kind == "sdxl" else [])],
            embeddings,
            int(opts["comma_padding_backtrack"]),
            str(opts["emphasis"]),
        )
        clip_stop = int(opts["CLIP_stop_at_last_layers"])
        settings = EncodeSettings(
            clip_stop, bool(opts["sdxl_clip_l_skip"]), str(opts["emphasis"]), bool(opts["use_old_scheduling"])
        )
        # A1111 measures prompt schedules in the sampler's total steps (second-order samplers: twice).
        total_steps = _schedule_steps(sampler, int(req.steps or 50))

        def encode(
            prompt: str, negative: str, loras: list[LoraUse], hires_steps: int | None = None
        ) -> tuple[dict[str, Any], list[str]]:
            self._apply_loras(model, loras)
            try:
                kwargs, used, notes = pipeline_kwargs(
                    model,
                    chunker,
                    extract_networks(prompt)[0],
                    negative,
                    settings,
                    steps=total_steps,
                    hires_steps=hires_steps,
                )
            except PromptSyntaxError as exc:
                raise EngineError(400, str(exc)) from exc
            job.warnings.extend(
                f"{note} is not applied by this engine's sampler yet: the first part's first step was used"
                for note in notes
            )
            return kwargs, used

        hr_cond: dict[str, Any] = {}
        if hr is not None:
            # The hires prompts go through the same encoder (LoRA text-encoder weights, clip skip, emphasis).
            hr_total = _schedule_steps(hr.sampler, hr.steps)
            hr_cond, hr_used = encode(hr.prompt, hr.negative, hr.loras, hr_total)
        else:
            hr_used = []
        cond, used_embeddings = encode(job.prompt, job.negative, job.loras)  # first-pass LoRAs stay on
        used_embeddings = sorted(set(used_embeddings) | set(hr_used))
        all_loras = list(job.loras)
        if hr is not None:
            all_loras += [lo for lo in hr.loras if lo[0].name not in {u[0].name for u in job.loras}]

        batch, n_iter, steps = int(req.batch_size or 1), int(req.n_iter or 1), int(req.steps or 50)
        width, height = int(req.width or 512), int(req.height or 512)
        seed, subseed = _random_seed(req.seed), _random_seed(req.subseed)
        all_seeds = [seed + i for i in range(batch * n_iter)]
        extra: dict[str, Any] = {}
        if opts["lora_add_hashes_to_infotext"] and all_loras:
            extra["Lora hashes"] = ", ".join(
                f"{lo.name}: {self.hashes.addnet(lo.filename)[:12]}" for lo, _, _ in all_loras
            )
        if opts["textual_inversion_add_hashes_to_infotext"] and used_embeddings:
            extra["TI hashes"] = ", ".join(
                f"{n}: {self.hashes.sha256(self.embedding_files[n])[:12]}" for n in used_embeddings
            )
        hr_extra: dict[str, Any] = {}
        if hr is not None:
            hr_extra = {"Denoising strength": hr.denoising_strength, **hr.params}
        vae_path = model.vae_path
        vae_hash = self.hashes.sha256(vae_path)[:10] if vae_path else None
        # A1111's create_infotext order: "Denoising strength" sits before "Clip skip"; the other hires keys
        # come from extra_generation_params (inserted at init, so before "Lora hashes"/"TI hashes").
        params: dict[str, Any] = {
            "Steps": steps,
            "Sampler": sampler.sampler.name,
            "Schedule type": sampler.schedule.label,
            "CFG scale": req.cfg_scale if req.cfg_scale is not None else 7.0,
            "Seed": None,
            "Size": f"{width}x{height}",
            "Model hash": info.shorthash if opts["add_model_hash_to_info"] else None,
            "Model": info.name_for_extra if opts["add_model_name_to_info"] else None,
            "VAE hash": vae_hash if opts["add_vae_hash_to_info"] else None,
            "VAE": vae_path.stem if vae_path and opts["add_vae_name_to_info"] else None,
            "Denoising strength": hr_extra.get("Denoising strength"),
            "Clip skip": clip_stop if clip_stop > 1 else None,
            **hr_extra,
            **extra,
            "Version": VERSION_TEXT if opts["add_version_to_infotext"] else None,
        }
        if req.eta is not None and sampler.sampler.name == "DDIM":
            params["Eta DDIM"] = req.eta

        images: list[str] = []
        infotexts: list[str] = []
        self.state.sampling_steps = steps

        def on_step(p: Any, i: int, _t: Any, _kw: dict[str, Any]) -> dict[str, Any]:
            self.state.sampling_step = i + 1
            if self.state.interrupted or self.state.skipped:
                p._interrupt = True
            return {}

        i2i = None
        if hr is not None:
            i2i = hires.img2img_pipeline(pipe, model.kind)
            i2i.scheduler = hr.sampler.build(model.scheduler_config)
        passes = 2 if hr is not None else 1
        guidance = float(params["CFG scale"])
        for it in range(n_iter):
            if self.state.interrupted:
                break
            self.state.job_no, self.state.sampling_step, self.state.skipped = it * passes, 0, False
            self.state.sampling_steps = steps
            seeds = all_seeds[it * batch : (it + 1) * batch]
            if isinstance(pipe.scheduler, DPMSolverSDEScheduler):
                pipe.scheduler.noise_sampler_seed = seeds[0]
            call_kwargs = _batched_conditioning(cond, batch, req.eta)
            self._maybe_tile(model, width, height)
            with torch.inference_mode():
                out = pipe(
                    **call_kwargs,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    width=width,
                    height=height,
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                    callback_on_step_end=on_step,
                    output_type="latent" if hr is not None and hr.latent else "pil",
                )
            result = out.images
            if hr is not None and i2i is not None:
                result = self._hires_pass(model, i2i, hr, job, result, hr_cond, seeds, guidance, on_step)
            for image, s in zip(result, seeds, strict=True):
                text = infotext.create(req.prompt or "", req.negative_prompt or "", {**params, "Seed": s})
                infotexts.append(text)
                if req.send_images is not False:
                    images.append(self._encode_image(image, text))
        info_json = {
            "prompt": req.prompt or "",
            "all_prompts": [req.prompt or ""] * len(infotexts),
            "negative_prompt": req.negative_prompt or "",
            "all_negative_prompts": [req.negative_prompt or ""] * len(infotexts),
            "seed": seed,
            "all_seeds": all_seeds[: len(infotexts)],
            "subseed": subseed,
            "all_subseeds": [subseed + i for i in range(len(infotexts))],
            "subseed_strength": req.subseed_strength or 0,
            "width": width,
            "height": height,
            "sampler_name": sampler.sampler.name,
            "cfg_scale": params["CFG scale"],
            "steps": steps,
            "batch_size": batch,
            "restore_faces": bool(req.restore_faces),
            "face_restoration_model": None,
            "sd_model_name": info.name_for_extra,
            "sd_model_hash": info.shorthash,
            "sd_vae_name": vae_path.stem if vae_path else None,
            "sd_vae_hash": vae_hash,
            "seed_resize_from_w": req.seed_resize_from_w,
            "seed_resize_from_h": req.seed_resize_from_h,
            "denoising_strength": req.denoising_strength,
            "extra_generation_params": {
                "Schedule type": sampler.schedule.label,
                # A1111 serialises its "Hires prompt" callables as null.
                **{k: None if k in _HR_CALLABLES else v for k, v in hr_extra.items()},
                **extra,
            },
            "index_of_first_image": 0,
            "infotexts": infotexts,
            "styles": req.styles or [],
            "job_timestamp": self.state.job_timestamp,
            "clip_skip": clip_stop,
            "is_using_inpainting_conditioning": False,
            "version": VERSION_TEXT,
            "interrupted": self.state.interrupted,
            "warnings": job.warnings,
        }
        return {"images": images, "parameters": req.model_dump(), "info": json.dumps(info_json)}

    def _hires_pass(
        self,
        model: LoadedModel,
        i2i: Any,
        hr: HiresPlan,
        job: Job,
        first: Any,
        cond: dict[str, Any],
        seeds: list[int],
        guidance: float,
        on_step: Any,
    ) -> list[Image.Image]:
        """Upscale the first pass (latents or images) and denoise it again at ``hr.denoising_strength``.

        Returns the first pass's images when interrupted/skipped before it (A1111 returns them too).
        """
        req = job.req
        if self.state.interrupted or self.state.skipped:
            return list(first) if not hr.latent else self._decode(model, first)
        self.state.job_no += 1
        self.state.sampling_step, self.state.sampling_steps = 0, hr.steps
        if hr.latent:
            init: Any = hires.upscale_latents(first, hr.upscaler, hr.target)
        else:
            init = [hires.upscale_image(image, hr.upscaler, hr.target) for image in first]
        if hr.denoising_strength == 0:
            return self._decode(model, init) if hr.latent else list(init)
        hr_w, hr_h = hr.target.size
        self._maybe_tile(model, hr_w, hr_h)
        if isinstance(i2i.scheduler, DPMSolverSDEScheduler):
            i2i.scheduler.noise_sampler_seed = seeds[0]
        total, strength = hires.img2img_steps(hr.steps, hr.denoising_strength)
        kwargs = _batched_conditioning(cond, len(seeds), req.eta)
        swap = _lora_key(hr.loras) != _lora_key(job.loras)
        if swap:
            self._apply_loras(model, hr.loras)
        try:
            with torch.inference_mode():
                out = i2i(
                    **kwargs,
                    image=init,
                    strength=strength,
                    num_inference_steps=total,
                    guidance_scale=guidance,
                    # A fresh generator per seed: the second pass's noise comes from the same seeds (A1111).
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                    callback_on_step_end=on_step,
                )
        finally:
            if swap:
                self._apply_loras(model, job.loras)
        return list(out.images)

    def _decode(self, model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
        """VAE-decode pipeline latents to PIL (fp16 VAEs that ask for it are upcast, as the pipelines do)."""
        pipe = model.pipe
        vae = pipe.vae
        dtype = vae.dtype
        upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        with torch.inference_mode():
            if upcast:
                vae.to(torch.float32)
            try:
                z = latents.to(device=latents.device, dtype=vae.dtype) / vae.config.scaling_factor
                decoded = vae.decode(z, return_dict=False)[0]
            finally:
                if upcast:
                    vae.to(dtype)
            return list(pipe.image_processor.postprocess(decoded, output_type="pil"))

    def _apply_loras(self, model: LoadedModel, loras: list[tuple[LoraInfo, float, float]]) -> None:
        """Load each LoRA once per model (adapter = file stem), then activate exactly this request's set."""
        pipe = model.pipe
        for lora, _, _ in loras:
            if lora.name not in model.loaded_loras:
                try:
                    pipe.load_lora_weights(str(lora.filename), adapter_name=lora.name)
                except (ValueError, KeyError, RuntimeError) as exc:
                    with contextlib.suppress(ValueError, KeyError):
                        pipe.delete_adapters([lora.name])
                    reason = str(exc).strip().splitlines()[0][:300]
                    ckpt = model.path.name
                    raise EngineError(
                        400, f"LoRA {lora.name!r} does not fit checkpoint {ckpt} ({model.kind}): {reason}"
                    ) from exc
                model.loaded_loras.add(lora.name)
        if not model.loaded_loras:
            return
        if not loras:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        weights = [{"unet": unet, "text_encoder": te, "text_encoder_2": te} for _, te, unet in loras]
        if model.kind == "sd15":
            weights = [{"unet": w["unet"], "text_encoder": w["text_encoder"]} for w in weights]
        pipe.set_adapters([lo.name for lo, _, _ in loras], adapter_weights=weights)

    def _maybe_tile(self, model: LoadedModel, width: int, height: int) -> None:
        if self.runtime.device != "cuda":
            return
        if width * height > 1024 * 1024:
            model.pipe.vae.enable_tiling()
        else:
            model.pipe.vae.disable_tiling()

    def _encode_image(self, image: Image.Image, text: str) -> str:
        """Base64 in ``samples_format``; infotext in a PNG ``parameters`` tEXt chunk, or JPEG/WebP EXIF."""
        fmt = str(self.options["samples_format"]).lower()
        buffer = io.BytesIO()
        with_info = bool(self.options["enable_pnginfo"])
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
            extra = {"lossless": True} if kind == "WEBP" and self.options["webp_lossless"] else {}
            image.convert("RGB").save(
                buffer, format=kind, quality=int(self.options["jpeg_quality"]), exif=exif, **extra
            )
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def start_background_load(engine: Engine) -> threading.Thread:
    """A1111 starts listening before the model is loaded; txt2img waits on the lock until it is."""
    thread = threading.Thread(target=engine.load_default, name="model-load", daemon=True)
    thread.start()
    return thread


def _schedule_steps(sampler: ResolvedSampler, steps: int) -> int:
    """A1111's ``total_steps``: second-order samplers call the model twice per step and count both."""
    return steps * 2 if sampler.sampler.options.get("second_order") else steps


def _batched_conditioning(cond: dict[str, Any], batch: int, eta: float | None) -> dict[str, Any]:
    """The prompt embeddings repeated for each image of a batch, plus ``eta`` when the request set it."""
    kwargs: dict[str, Any] = {k: v.repeat(batch, *[1] * (v.ndim - 1)) for k, v in cond.items()}
    if eta is not None:
        kwargs["eta"] = eta
    return kwargs
