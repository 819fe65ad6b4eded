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
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open

from ..tokenizer import VOCAB_SIZE, VocabularyError, load_clip_tokenizer, load_vocabulary
from .architectures import CONFIG_METADATA_KEY, REAL_CONFIGS, ModelKind, write_skeleton

log = logging.getLogger(__name__)

OFFLOAD_BELOW_BYTES = 20 * 1024**3
OPENCLIP_PAD = "!"  # token id 0

AnyPipeline = StableDiffusionPipeline | StableDiffusionXLPipeline


class ModelLoadError(RuntimeError):
    """A checkpoint or VAE that this engine cannot load (wrong architecture, missing tokenizer, bad file)."""


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision models run."""

    device: str
    dtype: torch.dtype
    cpu_offload: bool

    @classmethod
    def detect(cls, force_cpu: bool = False) -> Runtime:
        if not force_cpu and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            return cls("cuda", torch.float16, total < OFFLOAD_BELOW_BYTES)
        return cls("cpu", torch.float32, False)


@dataclass
class LoadedModel:
    """A pipeline plus what the prompt encoder and infotext need to know about it."""

    pipe: AnyPipeline
    kind: ModelKind
    path: Path
    text_widths: tuple[int, ...]
    skeleton: Path
    original_vae: AutoencoderKL
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    vae_path: Path | None = None
    loaded_loras: set[str] = field(default_factory=set)


def inspect_checkpoint(path: Path) -> tuple[ModelKind, dict[str, dict[str, Any]], int]:
    """Tell SD1.5 from SDXL by key, and find the component configs and the vocabulary size."""
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata() or {}
        if any(k.startswith("conditioner.embedders.1.") for k in keys):
            kind: ModelKind = "sdxl"
            vocab_key = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
        elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
            kind = "sd15"
            vocab_key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
        elif any(k.startswith("cond_stage_model.model.") for k in keys):
            raise ModelLoadError(f"{path.name} is an SD2.x checkpoint; this engine runs SD1.x and SDXL only")
        else:
            raise ModelLoadError(f"{path.name} is not an SD1.x/SDXL checkpoint in A1111's single-file layout")
        if vocab_key not in keys:
            raise ModelLoadError(f"{path.name} has no text encoder weights ({vocab_key})")
        vocab_size = int(handle.get_slice(vocab_key).get_shape()[0])
    configs = (
        json.loads(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else REAL_CONFIGS[kind]
    )
    return kind, configs, vocab_size


def load_checkpoint(
    path: Path, runtime: Runtime, skeleton_root: Path, tokenizer_dir: Path | None
) -> LoadedModel:
    """Load ``path`` without any network access."""
    started = time.perf_counter()
    kind, configs, vocab_size = inspect_checkpoint(path)
    if vocab_size != VOCAB_SIZE:
        raise ModelLoadError(
            f"{path.name}'s text encoder has {vocab_size} token embeddings; SD1.x and SDXL use CLIP's "
            f"{VOCAB_SIZE}"
        )
    vocabulary_dir = skeleton_root / "clip-vocabulary"
    if tokenizer_dir is not None or not (vocabulary_dir / "merges.txt").is_file():
        try:
            load_vocabulary(tokenizer_dir).write_folder(vocabulary_dir)
        except VocabularyError as exc:
            raise ModelLoadError(str(exc)) from exc
    skeleton = write_skeleton(skeleton_root, kind, configs, vocabulary_dir)
    tokenizer = load_clip_tokenizer(skeleton / "tokenizer")
    kwargs: dict[str, Any] = {
        "config": str(skeleton),
        "local_files_only": True,
        "torch_dtype": runtime.dtype,
        "tokenizer": tokenizer,
    }
    try:
        if kind == "sdxl":
            # OpenCLIP pads with token id 0 ("!"), as A1111's SDXL encoder does.
            kwargs["tokenizer_2"] = load_clip_tokenizer(skeleton / "tokenizer_2", pad_token=OPENCLIP_PAD)
            pipe: AnyPipeline = StableDiffusionXLPipeline.from_single_file(str(path), **kwargs)
        else:
            kwargs |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
            pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"cannot load {path.name}: {exc}") from exc
    _place(pipe, runtime)
    pipe.set_progress_bar_config(disable=True)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if kind == "sdxl" else [])
    widths = tuple(int(te.config.hidden_size) for te in encoders)
    log.info("loaded %s (%s) in %.2f s on %s", path.name, kind, time.perf_counter() - started, runtime.device)
    return LoadedModel(
        pipe=pipe, kind=kind, path=path, text_widths=widths, skeleton=skeleton, original_vae=pipe.vae
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


def _place(pipe: AnyPipeline, runtime: Runtime) -> None:
    if runtime.device == "cuda" and runtime.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(runtime.device)
