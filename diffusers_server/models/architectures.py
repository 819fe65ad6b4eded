"""Component configs ("config skeletons") for SD1.5 and SDXL single files, generated locally.

``from_single_file`` takes every component's architecture from a diffusers-layout folder of json
files; without one it goes to the Hugging Face hub. The engine writes that folder itself from these
dicts: the public SD1.5 and SDXL-base architectures for real checkpoints, or the exact configs that
``make-demo-models`` stores in a tiny model's safetensors metadata (key :data:`CONFIG_METADATA_KEY`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from diffusers import __version__ as diffusers_version

ModelKind = Literal["sd15", "sdxl"]
CONFIG_METADATA_KEY = "diffusers_server.configs"

_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
_VAE_REAL = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
_CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
REAL_CONFIGS: dict[ModelKind, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": {**_VAE_REAL, "scaling_factor": 0.18215},
        "text_encoder": _CLIP_L,
    },
    "sdxl": {
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "sample_size": 128,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [320, 640, 1280],
            "layers_per_block": 2,
            "transformer_layers_per_block": [1, 2, 10],
            "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        "vae": {**_VAE_REAL, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": _CLIP_L,
        "text_encoder_2": {
            **_CLIP_L,
            "architectures": ["CLIPTextModelWithProjection"],
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "projection_dim": 1280,
            "num_attention_heads": 20,
            "num_hidden_layers": 32,
            "hidden_act": "gelu",
        },
    },
}


def _model_index(kind: ModelKind) -> dict[str, Any]:
    index: dict[str, Any] = {
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if kind == "sd15":
        index |= {
            "_class_name": "StableDiffusionPipeline",
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    else:
        index |= {
            "_class_name": "StableDiffusionXLPipeline",
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }
    return index


def write_skeleton(
    root: Path, kind: ModelKind, configs: dict[str, dict[str, Any]], tokenizer_dir: Path
) -> Path:
    """Write (once per distinct config) the json-only diffusers folder that ``from_single_file`` needs."""
    blob = json.dumps({"kind": kind, "configs": configs, "tok": str(tokenizer_dir)}, sort_keys=True)
    folder = root / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if (folder / "model_index.json").is_file():
        return folder
    files: dict[str, dict[str, Any]] = {
        "model_index.json": _model_index(kind),
        "scheduler/scheduler_config.json": _SCHEDULER,
    }
    for component, config in configs.items():
        files[f"{component}/config.json"] = {**config, "_diffusers_version": diffusers_version}
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    for sub in ("tokenizer", "tokenizer_2") if kind == "sdxl" else ("tokenizer",):
        for name in ("vocab.json", "merges.txt"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / name).write_bytes((tokenizer_dir / name).read_bytes())
    return folder
