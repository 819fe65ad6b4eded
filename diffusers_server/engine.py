"""The generation engine: model folders, the loaded pipeline, options and A1111-compatible txt2img."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import load_file

from worker.registry.conversions import ConversionFailed
from worker.registry.convert import kohya_from_lora
from worker.registry.keymaps import lora_layout
from worker.registry.layouts import LayoutError
from worker.registry.safetensors_header import read_header

from . import __version__, hires, infotext, options
from .cond_schedule import BatchConds
from .conditioning import EncodeSettings, build_conds
from .config import ServerConfig
from .errors import RequestRefused
from .models import files
from .models.files import CheckpointInfo, HashCache, LoraInfo
from .models.pipelines import LoadedModel, ModelLoadError, Runtime, load_checkpoint, load_vae
from .prompt_syntax import NetworkTag, PromptSyntaxError, extract_networks, lora_requests, strip_comments
from .prompts import Embedding, PromptChunker
from .samplers import ResolvedSampler, SamplerError, requested_schedule, resolve
from .sampling import run
from .sampling.denoiser import UNetModel
from .sampling.noise import ImageNoise, posterior_generator
from .sampling.schedules import ScheduleOptions
from .sampling.timestep_samplers import SamplingError
from .schemas import Txt2ImgRequest
from .state import FifoLock, GenerationState
from .tokenizer import clip_tokenizers

log = logging.getLogger(__name__)

VERSION_TEXT = f"diffusers-server-{__version__}"
MAX_SIDE = 4096
MAX_IMAGES = 64
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


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
        self.state = GenerationState()
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
        #: folder kind -> {path: reason} for files listed as unusable and skipped (see files.scan)
        self.unusable: dict[str, dict[str, str]] = {}
        self._clip_layers: dict[Path, int | None] = {}  # checkpoint -> CLIP layers (from its header)
        self.refresh_all()

    # ---- folders ----

    def refresh_all(self) -> None:
        self.refresh_checkpoints()
        self.refresh_loras()
        self.refresh_embeddings()
        self.refresh_vae()

    def _scan(self, kind: str, folder: Path, exts: tuple[str, ...]) -> list[Path]:
        unusable: dict[str, str] = {}
        found = files.scan(folder, exts, models_dir=self.config.models_dir, unusable=unusable)
        self.unusable[kind] = unusable
        return found

    def unusable_listing(self) -> list[dict[str, str]]:
        """Files skipped at the last refresh of each folder, with the reason (never silently)."""
        return [
            {"kind": kind, "filename": path, "reason": reason}
            for kind, found in sorted(self.unusable.items())
            for path, reason in sorted(found.items())
        ]

    def refresh_checkpoints(self) -> None:
        """Single files and diffusers pipeline folders (loaded as they are), in A1111's listing order."""
        root = self.config.checkpoints
        infos = []
        for path in self._scan("checkpoints", root, files.CHECKPOINT_EXTS):
            try:
                infos.append(CheckpointInfo.from_file(path, root, self.hashes))
            except OSError as exc:  # removed or unreadable since the listing
                self.unusable["checkpoints"][str(path)] = f"unreadable: {exc.strerror or exc}"
                log.warning("skipping checkpoint %s: %s", path, exc)
        for folder in files.scan_pipelines(root):
            try:
                infos.append(CheckpointInfo.from_folder(folder, root, self.hashes))
            except (LayoutError, OSError) as exc:
                self.unusable["checkpoints"][str(folder)] = f"unusable diffusers folder: {exc}"
                log.warning("skipping diffusers folder %s: %s", folder, exc)
        self.checkpoints = sorted(infos, key=lambda info: info.name.lower())
        log.info("%d checkpoint(s) in %s", len(self.checkpoints), root)

    def refresh_loras(self) -> None:
        infos = [LoraInfo.from_file(p) for p in self._scan("loras", self.config.loras, files.LORA_EXTS)]
        self.loras = {info.name: info for info in infos}
        for info in infos:
            self.loras.setdefault(info.alias, info)

    def refresh_embeddings(self) -> None:
        self.embedding_files = {
            p.stem: p for p in self._scan("embeddings", self.config.embeddings, files.EMBEDDING_EXTS)
        }
        self.embeddings, self.embedding_errors = {}, {}
        for name, path in self.embedding_files.items():
            try:
                self.embeddings[name] = _parse_embedding(path)
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                self.embedding_errors[name] = str(exc)
                log.warning("skipping embedding %s: %s", path, exc)

    def refresh_vae(self) -> None:
        self.vaes = {p.name: p for p in self._scan("vae", self.config.vaes, files.VAE_EXTS)}

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        """Any A1111 alias (title, name, stem, model_name, shorthash, sha256, old hash); else 404."""
        for info in self.checkpoints:
            if name in info.aliases:
                return info
        titles = ", ".join(i.title for i in self.checkpoints) or "(none)"
        raise RequestRefused(404, f"checkpoint {name!r} not found; available: {titles}")

    # ---- model loading ----

    def load_default(self) -> None:
        """Load the configured (or first) checkpoint; runs in a background thread at start, like A1111."""
        with self.lock.hold():
            try:
                if not self.checkpoints:
                    raise RequestRefused(503, f"no checkpoints in {self.config.checkpoints}")
                wanted = self.config.ckpt or self.checkpoints[0].title
                info = self.find_checkpoint(wanted)
                self._ensure_model(info, str(self.options["sd_vae"]))
                self.options["sd_model_checkpoint"] = info.title
            except (RequestRefused, ModelLoadError) as exc:
                self.load_error = str(exc)
                log.error("initial model load failed: %s", exc)

    def _gone(
        self, what: str, name: str, refresh: Callable[[], None], names: Callable[[], list[str]]
    ) -> RequestRefused:
        """A listed model file that was removed from disk since: 404 naming it, never its full path."""
        refresh()
        return RequestRefused(
            404,
            f"{what} {name!r} was removed from disk after it was listed; "
            f"available: {', '.join(names()) or '(none)'}",
        )

    def _ensure_model(self, info: CheckpointInfo, vae_choice: str) -> LoadedModel:
        if self.model is None or self.model_info is None or self.model_info.filename != info.filename:
            if not (info.filename.is_file() or info.filename.is_dir()):  # a file or a diffusers folder
                raise self._gone(
                    "checkpoint",
                    info.title,
                    self.refresh_checkpoints,
                    lambda: [i.title for i in self.checkpoints],
                )
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
            raise RequestRefused(
                404, f"VAE {choice!r} not found; available: Automatic, None, {', '.join(self.vaes)}"
            )
        if not self.vaes[choice].is_file():
            raise self._gone("VAE", choice, self.refresh_vae, lambda: ["Automatic", "None", *self.vaes])
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
            raise RequestRefused(400, str(exc)) from exc
        with self.lock.hold():
            ckpt = values.get("sd_model_checkpoint")
            info = self.find_checkpoint(str(ckpt)) if ckpt is not None else self.model_info
            vae = str(values.get("sd_vae", self.options["sd_vae"]))
            self._vae_path(vae)
            if info is not None:
                try:
                    self._ensure_model(info, vae)
                except ModelLoadError as exc:
                    raise RequestRefused(400, str(exc)) from exc
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
                raise RequestRefused(status, message)

        refuse(req.script_name, f"Script '{req.script_name}' not found", 422)
        for title in req.alwayson_scripts or {}:
            refuse(True, f"always on script {title} not found", 422)
        refuse(req.styles, f"style(s) {req.styles} not found: this engine has no prompt styles")
        refuse(
            req.restore_faces,
            "restore_faces is not supported: A1111's face restorers (CodeFormer, GFPGAN) download their "
            "weights at run time and no PyPI package ships them; this engine never downloads models",
        )
        refuse(
            req.refiner_checkpoint not in (None, "", "None", "none"), "refiner_checkpoint is not supported"
        )
        refuse(req.firstpass_image, "firstpass_image is not supported")
        refuse(req.infotext, "infotext (filling fields from a parameters text) is not supported")
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
        # torch seeds are 64-bit, and image i of the job uses seed + i
        last_seed = SEED_MAX - batch * n_iter + 1
        for name in ("seed", "subseed"):
            value = getattr(req, name)
            refuse(
                value is not None and value != -1 and not SEED_MIN <= value <= last_seed,
                f"{name} must be -1 (random) or {SEED_MIN}..{last_seed} for {batch * n_iter} image(s); "
                f"got {str(value)[:40] if value is not None and abs(value) < 10**40 else 'a larger number'}",
            )
        try:
            resolve(req.sampler_name or req.sampler_index, req.scheduler)
        except SamplerError as exc:
            raise RequestRefused(404, str(exc)) from exc
        overrides = dict(req.override_settings or {})
        try:
            warnings += options.validate(overrides)
        except options.OptionError as exc:
            raise RequestRefused(400, f"override_settings: {exc}") from exc
        if "sd_model_checkpoint" in overrides:
            self.find_checkpoint(str(overrides["sd_model_checkpoint"]))
        self._check_clip_skip(overrides)
        if "sd_vae" in overrides:
            self._vae_path(str(overrides["sd_vae"]))
        if (req.subseed_strength or 0) != 0 and not 0 <= float(req.subseed_strength or 0) <= 1:
            raise RequestRefused(400, f"subseed_strength must be 0..1 (got {req.subseed_strength})")
        resolved = resolve(req.sampler_name or req.sampler_index, req.scheduler)
        uni_pc_order = int(overrides.get("uni_pc_order", self.options["uni_pc_order"]))
        if resolved.sampler.name == "UniPC" and steps < uni_pc_order:
            raise RequestRefused(
                400, f"UniPC needs at least uni_pc_order={uni_pc_order} steps (got steps={steps})"
            )
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

    def _check_clip_skip(self, overrides: dict[str, Any]) -> None:
        """Clip skip beyond the checkpoint's CLIP layers is a 400 (A1111 fails with an IndexError 500)."""
        clip_stop = int(overrides.get("CLIP_stop_at_last_layers", self.options["CLIP_stop_at_last_layers"]))
        wanted = overrides.get("sd_model_checkpoint") or self.options.get("sd_model_checkpoint")
        info = self.find_checkpoint(str(wanted)) if wanted else self.model_info
        if info is None:
            return
        if info.filename not in self._clip_layers:
            self._clip_layers[info.filename] = files.clip_layers(info.filename)
        layers = self._clip_layers[info.filename]
        if layers is not None and clip_stop > layers:
            raise RequestRefused(
                400,
                f"CLIP_stop_at_last_layers (clip skip) {clip_stop} is more than checkpoint {info.title} "
                f"allows: its text encoder has {layers} layers, so use 1..{layers}",
            )

    def _resolve_loras(self, tags: list[NetworkTag], warnings: list[str]) -> list[LoraUse]:
        for tag in tags:
            if tag.kind not in ("lora", "lyco"):
                raise RequestRefused(400, f"extra network <{tag.kind}:...> is not supported (only lora/lyco)")
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
                raise RequestRefused(404, f"LoRA {request.name!r} not found; available: {names}")
            if not self.loras[request.name].filename.is_file():
                raise self._gone(
                    "LoRA",
                    request.name,
                    self.refresh_loras,
                    lambda: sorted({i.name for i in self.loras.values()}),
                )
            if request.dyn is not None:
                warnings.append(f"{request.tag}: dyn={request.dyn} is not applied by this engine")
            loras.append((self.loras[request.name], request.te, request.unet))
        return loras

    def _prepare_hires(self, job: Job, width: int, height: int, steps: int, comments: bool) -> HiresPlan:
        """Validate ``hr_*`` like A1111 (``StableDiffusionProcessingTxt2Img.init``), with 4xx, not 500."""
        req = job.req
        if req.denoising_strength is None:
            raise RequestRefused(
                400, "enable_hr needs denoising_strength (0..1, the second pass's strength); it was not given"
            )
        strength = float(req.denoising_strength)
        if not 0 <= strength <= 1:
            raise RequestRefused(400, f"denoising_strength must be 0..1 (got {strength})")
        upscaler = req.hr_upscaler or hires.DEFAULT_UPSCALER
        if upscaler not in hires.valid_upscalers():
            raise RequestRefused(
                404, f"hr_upscaler {upscaler!r} not found; available: {', '.join(hires.valid_upscalers())}"
            )
        scale, rx, ry = float(req.hr_scale or 0), int(req.hr_resize_x or 0), int(req.hr_resize_y or 0)
        if rx < 0 or ry < 0:
            raise RequestRefused(400, "hr_resize_x/hr_resize_y must be >= 0")
        if rx == 0 and ry == 0 and scale <= 0:
            raise RequestRefused(400, "hr_scale must be > 0 (or give hr_resize_x/hr_resize_y)")
        target = hires.target(width, height, scale, rx, ry)
        hr_w, hr_h = target.size
        if min(hr_w, hr_h) < 8 or max(target.upscale_x, target.upscale_y) > MAX_SIDE:
            raise RequestRefused(
                400, f"hires size {target.upscale_x}x{target.upscale_y} is outside 8..{MAX_SIDE} per side"
            )
        hr_steps = int(req.hr_second_pass_steps or 0) or steps
        if not 1 <= hr_steps <= 1000:
            raise RequestRefused(400, "hr_second_pass_steps must be 0 (same as steps) or 1..1000")
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
            raise RequestRefused(404, f"hires pass: {exc}") from exc
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
            raise RequestRefused(503, self.load_error or "no checkpoint loaded")
        try:
            model = self._ensure_model(self.find_checkpoint(str(name)), str(opts["sd_vae"]))
        except ModelLoadError as exc:
            raise RequestRefused(400, str(exc)) from exc
        info = self.model_info
        assert info is not None
        # A1111 stores the loaded model's title, whatever alias was sent.
        opts["sd_model_checkpoint"] = info.title
        pipe = model.pipe
        sampler = resolve(req.sampler_name or req.sampler_index, req.scheduler)
        hr = job.hires
        if hr is not None and hr.checkpoint is not None and hr.checkpoint.filename != info.filename:
            raise RequestRefused(
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
        batch, n_iter, steps = int(req.batch_size or 1), int(req.n_iter or 1), int(req.steps or 50)
        # A1111 measures prompt schedules in the sampler's total steps (second-order samplers: twice).
        first_total = sampler.sampler.total_steps(steps)

        def encode(
            prompt: str, negative: str, loras: list[LoraUse], total: int, hires_steps: int | None = None
        ) -> tuple[BatchConds, list[str]]:
            self._apply_loras(model, loras)
            # Only the positive prompt's tags are extra networks; A1111 encodes the negative's as text.
            prompts = [extract_networks(prompt)[0]] * batch
            try:
                return build_conds(
                    model,
                    chunker,
                    prompts,
                    [negative] * batch,
                    settings,
                    steps=total,
                    hires_steps=hires_steps,
                )
            except PromptSyntaxError as exc:
                raise RequestRefused(400, str(exc)) from exc

        hr_conds: BatchConds | None = None
        hr_used: list[str] = []
        if hr is not None:
            # A1111 encodes the hires prompts with the first pass's step count as the base and the hires
            # pass's as ``hires_steps`` (its prompt-editing timeline), with the hires LoRAs active.
            hr_total = hr.sampler.sampler.total_steps(hr.steps)
            hr_conds, hr_used = encode(hr.prompt, hr.negative, hr.loras, first_total, hr_total)
        conds, used_embeddings = encode(job.prompt, job.negative, job.loras, first_total)
        used_embeddings = sorted(set(used_embeddings) | set(hr_used))
        all_loras = list(job.loras)
        if hr is not None:
            all_loras += [lo for lo in hr.loras if lo[0].name not in {u[0].name for u in job.loras}]

        width, height = int(req.width or 512), int(req.height or 512)
        seed, subseed = _random_seed(req.seed), _random_seed(req.subseed)
        variation = float(req.subseed_strength or 0)
        # A1111: with a variation seed every image keeps the seed and the subseeds count up instead.
        all_seeds = [seed + (i if variation == 0 else 0) for i in range(batch * n_iter)]
        all_subseeds = [subseed + i for i in range(batch * n_iter)]
        resize_w, resize_h = int(req.seed_resize_from_w or 0), int(req.seed_resize_from_h or 0)
        tiling = bool(opts["tiling"]) if req.tiling is None else bool(req.tiling)
        sampling = self._sampling_options(req, opts)
        ensd = int(opts["eta_noise_seed_delta"] or 0)
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
        uses_ensd = ensd != 0 and _uses_ensd(sampler, sampling)
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
            "Variation seed": None,
            "Variation seed strength": variation if variation != 0 else None,
            "Seed resize from": f"{resize_w}x{resize_h}" if resize_w > 0 and resize_h > 0 else None,
            "Denoising strength": hr_extra.get("Denoising strength"),
            "Clip skip": clip_stop if clip_stop > 1 else None,
            "ENSD": ensd if uses_ensd else None,
            "RNG": opts["randn_source"] if opts["randn_source"] != "GPU" else None,
            "Tiling": "True" if tiling else None,
            **hr_extra,
            **extra,
        }
        sampler_extra: dict[str, Any] = {}

        images: list[str] = []
        infotexts: list[str] = []
        self.state.sampling_steps = steps

        def on_step(i: int) -> None:
            self.state.sampling_step = i + 1

        def should_stop() -> bool:
            return self.state.interrupted or self.state.skipped

        passes = 2 if hr is not None else 1
        guidance = float(params["CFG scale"])
        device = torch.device(self.runtime.device)
        latent_channels = int(pipe.unet.config.in_channels)
        crop = (int(opts["sdxl_crop_top"]), int(opts["sdxl_crop_left"]))
        with _circular_padding(model, tiling), torch.inference_mode():
            for it in range(n_iter):
                if self.state.interrupted:
                    break
                self.state.job_no, self.state.sampling_step, self.state.skipped = it * passes, 0, False
                self.state.sampling_steps = steps
                seeds = all_seeds[it * batch : (it + 1) * batch]
                subseeds = all_subseeds[it * batch : (it + 1) * batch]

                def noise_for(
                    shape: tuple[int, int, int], seeds: list[int] = seeds, subseeds: list[int] = subseeds
                ) -> ImageNoise:
                    return ImageNoise(
                        shape,
                        seeds,
                        device=device,
                        source=str(opts["randn_source"]),
                        subseeds=subseeds,
                        subseed_strength=variation,
                        seed_resize_from_h=resize_h,
                        seed_resize_from_w=resize_w,
                        eta_noise_seed_delta=ensd,
                    )

                first_pass = run.Pass(
                    sampler=sampler,
                    conds=conds,
                    cfg_scale=guidance,
                    seeds=seeds,
                    noise=noise_for((latent_channels, height // 8, width // 8)),
                    unet=UNetModel(pipe.unet, model.kind == "sdxl", (height, width, *crop, height, width)),
                    alphas_cumprod=model.alphas_cumprod,
                    options=sampling,
                    should_stop=should_stop,
                    on_step=on_step,
                    extra_params=sampler_extra,
                )
                try:
                    latents = run.txt2img(first_pass, steps)
                    if hr is not None and hr_conds is not None:
                        result = self._hires_pass(
                            model,
                            hr,
                            job,
                            latents,
                            hr_conds,
                            seeds,
                            guidance,
                            on_step,
                            should_stop,
                            noise_for,
                            sampling,
                            crop,
                            sampler_extra,
                        )
                    else:
                        result = self._decode(model, latents)
                except SamplingError as exc:
                    raise RequestRefused(400, str(exc)) from exc
                for index, image in enumerate(result):
                    n = it * batch + index
                    image_params = {
                        **params,
                        "Seed": all_seeds[n],
                        "Variation seed": all_subseeds[n] if variation != 0 else None,
                        **sampler_extra,
                        "Version": VERSION_TEXT if opts["add_version_to_infotext"] else None,
                    }
                    text = infotext.create(req.prompt or "", req.negative_prompt or "", image_params)
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
            "all_subseeds": all_subseeds[: len(infotexts)],
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
                **sampler_extra,
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

    @staticmethod
    def _sampling_options(req: Txt2ImgRequest, opts: dict[str, Any]) -> run.SamplingOptions:
        """The request's sampler fields over A1111's options (A1111's ``fill_fields_from_opts`` and
        ``Sampler.initialize``: a non-default option wins over the request and goes into the infotext)."""
        sigma_options: dict[str, float] = {}
        values: dict[str, float] = {}
        for field_name, key, default in (
            ("s_churn", "Sigma churn", 0.0),
            ("s_tmin", "Sigma tmin", 0.0),
            ("s_tmax", "Sigma tmax", 0.0),
            ("s_noise", "Sigma noise", 1.0),
        ):
            option = float(opts[field_name])
            requested = getattr(req, field_name)
            values[field_name] = (
                option if option != default else float(requested if requested is not None else option)
            )
            if option != default:
                sigma_options[key] = option if field_name != "s_tmax" or option else float("inf")
        return run.SamplingOptions(
            eta=req.eta,
            eta_ancestral=float(opts["eta_ancestral"]),
            eta_ddim=float(opts["eta_ddim"]),
            s_churn=values["s_churn"],
            s_tmin=values["s_tmin"],
            s_tmax=values["s_tmax"],
            s_noise=values["s_noise"],
            s_min_uncond=float(req.s_min_uncond if req.s_min_uncond is not None else opts["s_min_uncond"]),
            sigma_options=sigma_options,
            sgm_noise_multiplier=bool(opts["sgm_noise_multiplier"]),
            uni_pc_variant=str(opts["uni_pc_variant"]),
            uni_pc_skip_type=str(opts["uni_pc_skip_type"]),
            uni_pc_order=int(opts["uni_pc_order"]),
            uni_pc_lower_order_final=bool(opts["uni_pc_lower_order_final"]),
            schedule=ScheduleOptions.from_options(opts),
        )

    def _hires_pass(
        self,
        model: LoadedModel,
        hr: HiresPlan,
        job: Job,
        first: torch.Tensor,
        conds: BatchConds,
        seeds: list[int],
        guidance: float,
        on_step: Callable[[int], None],
        should_stop: Callable[[], bool],
        noise_for: Callable[[tuple[int, int, int]], ImageNoise],
        sampling: run.SamplingOptions,
        crop: tuple[int, int],
        sampler_extra: dict[str, Any],
    ) -> list[Image.Image]:
        """A1111 ``sample_hr_pass``: upscale the first pass (latents, or decoded images re-encoded by the
        VAE), crop, noise to the img2img start and denoise ``hr.steps`` steps.

        Returns the first pass's images when interrupted/skipped before it (A1111 returns them too).
        """
        if self.state.interrupted or self.state.skipped:
            return self._decode(model, first)
        self.state.job_no += 1
        self.state.sampling_step, self.state.sampling_steps = 0, hr.steps
        target = hr.target
        if hr.latent:
            upscaled = hires.upscale_latents(first, hr.upscaler, target)
        else:
            images = [hires.upscale_image(image, hr.upscaler, target) for image in self._decode(model, first)]
            upscaled = self._encode_latents(model, images, seeds)
        init = hires.crop_latents(upscaled, target)
        if hr.denoising_strength == 0:
            return self._decode(model, init)
        h_lat, w_lat = init.shape[-2:]
        hr_h, hr_w = target.upscale_y, target.upscale_x
        second = run.Pass(
            sampler=hr.sampler,
            conds=conds,
            cfg_scale=guidance,
            seeds=seeds,
            noise=noise_for((int(init.shape[1]), int(h_lat), int(w_lat))),
            unet=UNetModel(model.pipe.unet, model.kind == "sdxl", (hr_h, hr_w, *crop, hr_h, hr_w)),
            alphas_cumprod=model.alphas_cumprod,
            options=sampling,
            should_stop=should_stop,
            on_step=on_step,
            extra_params=sampler_extra,
        )
        swap = _lora_key(hr.loras) != _lora_key(job.loras)
        if swap:
            self._apply_loras(model, hr.loras)
        try:
            latents = run.img2img(second, init, hr.steps, hr.denoising_strength)
        finally:
            if swap:
                self._apply_loras(model, job.loras)
        return self._decode(model, latents)

    def _decode(self, model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
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

    def _encode_latents(
        self, model: LoadedModel, images: list[Image.Image], seeds: list[int]
    ) -> torch.Tensor:
        """A1111's ``images_tensor_to_samples``: each image through the VAE encoder, the posterior sampled
        with the CPU generator A1111's noise code left seeded with the batch's last seed."""
        vae = model.pipe.vae
        generator = posterior_generator(seeds)
        latents = []
        for image in images:
            array = np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0)
            pixels = torch.from_numpy(array)[None].to(vae.device, vae.dtype) * 2 - 1
            dist = vae.encode(pixels).latent_dist
            eps = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
            latents.append((dist.mean + dist.std * eps) * vae.config.scaling_factor)
        return torch.cat(latents).float()

    def _kohya_file(self, lora: LoraInfo, model: LoadedModel) -> Path:
        """A diffusers/PEFT-layout LoRA as the kohya file the registry's converter makes of it (cached).

        diffusers' own loader applies only part of some layouts it writes itself (the ``lora.down``
        keys of ``convert_state_dict_to_diffusers``) and skips a bare PEFT state, with a warning; the
        converted file is applied whole, exactly as A1111 applies the same conversion.
        """
        if lora.filename.suffix.lower() != ".safetensors":
            return lora.filename
        layout = lora_layout(read_header(lora.filename).tensors)
        if layout not in ("diffusers", "peft"):
            return lora.filename
        unet_config = dict(model.pipe.unet.config)
        st = lora.filename.stat()
        key = json.dumps(
            [str(lora.filename), st.st_size, st.st_mtime_ns, unet_config], sort_keys=True, default=str
        )
        target = self.skeleton_root / "loras" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        widths = dict(zip(("text_encoder", "text_encoder_2"), model.text_widths, strict=False))
        try:
            kohya_from_lora([lora.filename], tmp, unet_config=unet_config, text_widths=widths)  # type: ignore[arg-type]
        except ConversionFailed as exc:
            tmp.unlink(missing_ok=True)
            raise RequestRefused(
                400, f"LoRA {lora.name!r} cannot be applied to {model.path.name}: {exc.message}"
            ) from exc
        tmp.replace(target)
        log.info("LoRA %s (%s layout) applied through its kohya conversion", lora.name, layout)
        return target

    def _apply_loras(self, model: LoadedModel, loras: list[tuple[LoraInfo, float, float]]) -> None:
        """Load each LoRA once per model (adapter = file stem), then activate exactly this request's set."""
        pipe = model.pipe
        for lora, _, _ in loras:
            if lora.name not in model.loaded_loras:
                try:
                    pipe.load_lora_weights(str(self._kohya_file(lora, model)), adapter_name=lora.name)
                except (ValueError, KeyError, RuntimeError) as exc:
                    with contextlib.suppress(ValueError, KeyError):
                        pipe.delete_adapters([lora.name])
                    reason = str(exc).strip().splitlines()[0][:300]
                    ckpt = model.path.name
                    raise RequestRefused(
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


def _uses_ensd(sampler: ResolvedSampler, sampling: run.SamplingOptions) -> bool:
    """A1111 ``is_sampler_using_eta_noise_seed_delta``: ancestral samplers with a non-zero eta."""
    eta = sampling.eta
    if eta is None:
        eta = sampling.eta_ddim if sampler.sampler.family == "timesteps" else sampling.eta_ancestral
    return eta != 0 and bool(sampler.sampler.options.get("uses_ensd"))


@contextlib.contextmanager
def _circular_padding(model: LoadedModel, enabled: bool) -> Iterator[None]:
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
