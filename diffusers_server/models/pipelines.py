"""Loading A1111 single-file checkpoints into diffusers pipelines, offline, on the best device available.

CUDA gets fp16 with SDPA attention (diffusers' default), VAE tiling for large images and model CPU offload
below ~20 GB of VRAM; everything else runs fp32 on the CPU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from worker.registry.detect import UnsupportedCheckpoint, checkpoint_pipeline, unet_in_channels
from worker.registry.layouts import LayoutError, inspect_diffusers_folder
from worker.registry.pipeline_configs import CONFIG_METADATA_KEY, REAL_CONFIGS, PipelineKind
from worker.registry.safetensors_header import HeaderError, SafetensorsHeader, read_header

from ..errors import ModelLoadError
from ..sampling.schedules import train_alphas_cumprod
from ..tokenizer import VOCAB_SIZE, VocabularyError, load_clip_tokenizer, load_vocabulary
from .components import COMPONENT_PREFIXES, load_components, load_folder_components
from .skeleton import write_skeleton

log = logging.getLogger(__name__)

OFFLOAD_BELOW_BYTES = 20 * 1024**3
OPENCLIP_PAD = "!"  # token id 0


class SDPipeline(Protocol):
    """What this engine uses of diffusers' SD1.x and SDXL pipelines (SDXL's adds ``text_encoder_2``)."""

    vae: Any
    unet: Any
    text_encoder: Any

    def set_progress_bar_config(self, **kwargs: Any) -> None: ...
    def enable_model_cpu_offload(self) -> None: ...
    def to(self, device: str) -> Any: ...
    def load_lora_weights(self, path: str, adapter_name: str) -> None: ...
    def delete_adapters(self, adapter_names: list[str]) -> None: ...
    def set_adapters(self, adapter_names: list[str], adapter_weights: list[dict[str, float]]) -> None: ...
    def enable_lora(self) -> None: ...
    def disable_lora(self) -> None: ...


def text_encoders(pipe: SDPipeline, kind: PipelineKind) -> list[Any]:
    """CLIP-L, then (SDXL) OpenCLIP-G."""
    return [pipe.text_encoder] + ([getattr(pipe, "text_encoder_2")] if kind == "sdxl" else [])  # noqa: B009


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision models run."""

    device: str
    dtype: torch.dtype
    cpu_offload: bool

    @classmethod
    def detect(cls, force_cpu: bool = False, threads: int | None = None) -> Runtime:
        """The best device; ``threads`` pins torch's CPU threads (byte-identical outputs need a fixed count).

        Called once, before the first model load; it also silences diffusers' and transformers' progress bars
        and warnings (the server reports through its own log).
        """
        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        if threads:
            torch.set_num_threads(threads)
        if not force_cpu and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            return cls("cuda", torch.float16, total < OFFLOAD_BELOW_BYTES)
        return cls("cpu", torch.float32, False)


@dataclass
class LoadedModel:
    """A pipeline plus what the prompt encoder and infotext need to know about it."""

    pipe: SDPipeline
    kind: PipelineKind
    path: Path
    text_widths: tuple[int, ...]
    skeleton: Path
    original_vae: AutoencoderKL
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    vae_path: Path | None = None
    loaded_loras: set[str] = field(default_factory=set)
    # The training noise schedule the samplers work on (SD1.x and SDXL share it).
    alphas_cumprod: torch.Tensor = field(default_factory=train_alphas_cumprod)


def inspect_checkpoint(path: Path) -> tuple[PipelineKind, dict[str, dict[str, Any]], int]:
    """Which pipeline (the registry's detection, one definition), the component configs and the vocabulary."""
    return _describe(_header(path), path.name)


def _describe(header: SafetensorsHeader, name: str) -> tuple[PipelineKind, dict[str, dict[str, Any]], int]:
    try:
        kind = checkpoint_pipeline(header.tensors, header.metadata, name=name)
    except UnsupportedCheckpoint as exc:
        raise ModelLoadError(str(exc)) from exc
    vocab_key = COMPONENT_PREFIXES[kind]["text_encoder"] + "text_model.embeddings.token_embedding.weight"
    if vocab_key not in header.tensors:
        raise ModelLoadError(f"{name} has no text encoder weights ({vocab_key})")
    vocab_size = header.tensors[vocab_key].shape[0]
    metadata = header.metadata
    configs = (
        json.loads(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else REAL_CONFIGS[kind]
    )
    # an inpainting (9) or instruct-pix2pix (8) UNet has the same architecture but a wider first convolution
    channels = unet_in_channels(header.tensors)
    if channels is not None and channels != configs["unet"].get("in_channels"):
        configs = {**configs, "unet": {**configs["unet"], "in_channels": channels}}
    return kind, configs, vocab_size


def _header(path: Path) -> SafetensorsHeader:
    try:
        return read_header(path)
    except (HeaderError, OSError) as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc


def load_checkpoint(
    path: Path, runtime: Runtime, skeleton_root: Path, tokenizer_dir: Path | None
) -> LoadedModel:
    """Load ``path`` (a single file, or a diffusers pipeline folder) without any network access."""
    if path.is_dir():
        return load_pipeline_folder(path, runtime, skeleton_root, tokenizer_dir)
    started = time.perf_counter()
    header = _header(path)
    kind, configs, vocab_size = _describe(header, path.name)
    vocabulary_dir = _clip_vocabulary_dir(path.name, vocab_size, skeleton_root, tokenizer_dir)
    skeleton = write_skeleton(skeleton_root, kind, configs, vocabulary_dir)
    try:
        parts = load_components(path, header, kind, configs, runtime.dtype)
        pipe = _assemble(kind, parts, skeleton)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"cannot load {path.name}: {exc}") from exc
    _place(pipe, runtime)
    pipe.set_progress_bar_config(disable=True)
    widths = tuple(int(te.config.hidden_size) for te in text_encoders(pipe, kind))
    log.info("loaded %s (%s) in %.2f s on %s", path.name, kind, time.perf_counter() - started, runtime.device)
    return LoadedModel(
        pipe=pipe, kind=kind, path=path, text_widths=widths, skeleton=skeleton, original_vae=pipe.vae
    )


def _assemble(kind: PipelineKind, parts: dict[str, Any], skeleton: Path) -> SDPipeline:
    """The diffusers pipeline around loaded components, with the skeleton's tokenizers and scheduler."""
    tokenizer = load_clip_tokenizer(skeleton / "tokenizer")
    scheduler = EulerDiscreteScheduler.from_pretrained(str(skeleton), subfolder="scheduler")
    if kind == "sdxl":
        # OpenCLIP pads with token id 0 ("!"), as A1111's SDXL encoder does.
        tokenizer_2 = load_clip_tokenizer(skeleton / "tokenizer_2", pad_token=OPENCLIP_PAD)
        sdxl: SDPipeline = StableDiffusionXLPipeline(
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler, add_watermarker=False, **parts
        )
        return sdxl
    sd: SDPipeline = StableDiffusionPipeline(
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **parts,
    )
    return sd


def _clip_vocabulary_dir(name: str, vocab_size: int, skeleton_root: Path, tokenizer_dir: Path | None) -> Path:
    """CLIP's ``vocab.json`` + ``merges.txt`` (from ``--clip-tokenizer`` or openai-clip) for the pipelines.

    Prompts are tokenized by ``tokenizer.py`` as A1111 does; the pipelines only need a tokenizer object of
    the same vocabulary. A text encoder of another vocabulary size is not an SD1.x/SDXL one.
    """
    if vocab_size != VOCAB_SIZE:
        raise ModelLoadError(
            f"{name}'s text encoder has {vocab_size} token embeddings; SD1.x and SDXL use CLIP's {VOCAB_SIZE}"
        )
    vocabulary_dir = skeleton_root / "clip-vocabulary"
    if tokenizer_dir is not None or not (vocabulary_dir / "merges.txt").is_file():
        try:
            load_vocabulary(tokenizer_dir).write_folder(vocabulary_dir)
        except VocabularyError as exc:
            raise ModelLoadError(str(exc)) from exc
    return vocabulary_dir


def load_pipeline_folder(
    folder: Path, runtime: Runtime, skeleton_root: Path, tokenizer_dir: Path | None
) -> LoadedModel:
    """Load a diffusers pipeline folder (SD1.x or SDXL) directly: its weights streamed in as they are."""
    started = time.perf_counter()
    try:
        info = inspect_diffusers_folder(folder)
        kind: PipelineKind = info.pipeline_kind
    except (LayoutError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {folder.name}: {exc}") from exc
    if "text_encoder" not in info.configs or "vae" not in info.configs:
        raise ModelLoadError(f"cannot load {folder.name}: it needs text_encoder/ and vae/")
    vocab_size = int(info.configs["text_encoder"].get("vocab_size", 0))
    # The folder's own tokenizer/ is not read: prompts are tokenized as A1111 tokenizes them for the
    # converted checkpoint (CLIP's vocabulary, the slow tokenizer's rules, open_clip for CLIP-G), and the
    # pipeline's tokenizers and scheduler come from the skeleton, as for a single file.
    vocabulary_dir = _clip_vocabulary_dir(folder.name, vocab_size, skeleton_root, tokenizer_dir)
    skeleton = write_skeleton(skeleton_root, kind, info.configs, vocabulary_dir)
    try:
        parts = load_folder_components(info.weights, info.configs, runtime.dtype)
        pipe = _assemble(kind, parts, skeleton)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"cannot load {folder.name}: {exc}") from exc
    _place(pipe, runtime)
    pipe.set_progress_bar_config(disable=True)
    widths = tuple(int(te.config.hidden_size) for te in text_encoders(pipe, kind))
    log.info(
        "loaded %s (%s folder) in %.2f s on %s",
        folder.name,
        kind,
        time.perf_counter() - started,
        runtime.device,
    )
    return LoadedModel(
        pipe=pipe, kind=kind, path=folder, text_widths=widths, skeleton=skeleton, original_vae=pipe.vae
    )


def load_vae(path: Path, skeleton: Path, runtime: Runtime) -> AutoencoderKL:
    """Load an A1111 standalone VAE file with the architecture of the checkpoint it will be used with."""
    try:
        vae = AutoencoderKL.from_single_file(
            str(path), config=str(skeleton), subfolder="vae", local_files_only=True, torch_dtype=runtime.dtype
        )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"cannot load VAE {path.name} for this checkpoint: {exc}") from exc
    return vae.to(runtime.device)


def _place(pipe: SDPipeline, runtime: Runtime) -> None:
    if runtime.device == "cuda" and runtime.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(runtime.device)
