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
from transformers import CLIPTokenizer

from worker.registry.layouts import LayoutError, inspect_diffusers_folder

from ..tokenizer import (
    BYTE_LEVEL_VOCAB_SIZE,
    CLIP_REPO,
    cached_clip_tokenizer_dir,
    load_clip_tokenizer,
    write_byte_level_vocab,
)
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
    """Load ``path`` (a single file, or a diffusers pipeline folder) without any network access."""
    if path.is_dir():
        return load_pipeline_folder(path, runtime, skeleton_root, tokenizer_dir)
    started = time.perf_counter()
    kind, configs, vocab_size = inspect_checkpoint(path)
    if vocab_size != BYTE_LEVEL_VOCAB_SIZE and tokenizer_dir is None:
        tokenizer_dir = cached_clip_tokenizer_dir()
        if tokenizer_dir is None:
            raise ModelLoadError(
                f"{path.name} needs the real CLIP vocabulary ({vocab_size} tokens): start the engine with "
                f"--clip-tokenizer DIR (a folder with CLIP's vocab.json and merges.txt) or put {CLIP_REPO}'s "
                "tokenizer in the local Hugging Face cache"
            )
        log.info("using the cached CLIP tokenizer in %s", tokenizer_dir)
    skeleton = write_skeleton(skeleton_root, kind, configs, tokenizer_dir)
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


def _folder_tokenizers(
    folder: Path, kind: ModelKind, vocab_size: int, skeleton_root: Path, tokenizer_dir: Path | None
) -> dict[str, Any]:
    """The folder's own tokenizers when it has them; else the ones a single file of its vocabulary gets."""
    pads = {"tokenizer": None, "tokenizer_2": OPENCLIP_PAD}
    wanted = ("tokenizer", "tokenizer_2") if kind == "sdxl" else ("tokenizer",)
    if all((folder / sub).is_dir() for sub in wanted):
        found: dict[str, Any] = {}
        for sub in wanted:
            extra = {"pad_token": pads[sub]} if pads[sub] else {}
            found[sub] = CLIPTokenizer.from_pretrained(str(folder / sub), model_max_length=77, **extra)
        return found
    if vocab_size != BYTE_LEVEL_VOCAB_SIZE and tokenizer_dir is None:
        tokenizer_dir = cached_clip_tokenizer_dir()
        if tokenizer_dir is None:
            raise ModelLoadError(
                f"{folder.name} has no tokenizer/ and needs the real CLIP vocabulary ({vocab_size} tokens): "
                f"start the engine with --clip-tokenizer DIR or put {CLIP_REPO}'s tokenizer in the local "
                "Hugging Face cache"
            )
    source = tokenizer_dir or write_byte_level_vocab(skeleton_root / "byte-level-tokenizer")
    return {sub: load_clip_tokenizer(source, pad_token=pads[sub]) for sub in wanted}


def load_pipeline_folder(
    folder: Path, runtime: Runtime, skeleton_root: Path, tokenizer_dir: Path | None
) -> LoadedModel:
    """Load a diffusers pipeline folder (SD1.x or SDXL) directly: no key conversion, no config skeleton."""
    started = time.perf_counter()
    try:
        info = inspect_diffusers_folder(folder)
        kind: ModelKind = info.pipeline_kind
    except (LayoutError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {folder.name}: {exc}") from exc
    if "text_encoder" not in info.configs or "vae" not in info.configs:
        raise ModelLoadError(f"cannot load {folder.name}: it needs text_encoder/ and vae/")
    vocab_size = int(info.configs["text_encoder"].get("vocab_size", 0))
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "torch_dtype": runtime.dtype,
        **_folder_tokenizers(folder, kind, vocab_size, skeleton_root, tokenizer_dir),
    }
    try:
        if kind == "sdxl":
            pipe: AnyPipeline = StableDiffusionXLPipeline.from_pretrained(str(folder), **kwargs)
        else:
            kwargs |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
            pipe = StableDiffusionPipeline.from_pretrained(str(folder), **kwargs)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"cannot load {folder.name}: {exc}") from exc
    _place(pipe, runtime)
    pipe.set_progress_bar_config(disable=True)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if kind == "sdxl" else [])
    widths = tuple(int(te.config.hidden_size) for te in encoders)
    log.info(
        "loaded %s (%s folder) in %.2f s on %s",
        folder.name,
        kind,
        time.perf_counter() - started,
        runtime.device,
    )
    return LoadedModel(
        pipe=pipe, kind=kind, path=folder, text_widths=widths, skeleton=folder, original_vae=pipe.vae
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
