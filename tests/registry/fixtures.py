"""Tiny but real safetensors files of every kind and architecture the registry detects.

Shapes keep only the dimension detection reads (the context width), so each file is a few KB.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

Spec = dict[str, tuple[int, ...]]

SPECS: dict[str, Spec] = {
    "checkpoint-sd15": {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (4, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (2, 8),
        "first_stage_model.decoder.conv_in.weight": (2, 4),
    },
    "checkpoint-sd2": {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (4, 1024),
        "cond_stage_model.model.token_embedding.weight": (2, 8),
    },
    "checkpoint-sdxl": {
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (4, 2048),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (2, 8),
        "conditioner.embedders.1.model.token_embedding.weight": (2, 8),
    },
    "checkpoint-sdxl_refiner": {
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (4, 1280),
        "conditioner.embedders.0.model.token_embedding.weight": (2, 8),
    },
    "checkpoint-flux": {
        "model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (4, 8),
    },
    "lora-sd15": {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8),
    },
    "lora-sdxl": {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8),
    },
    "lora-sdxl-unet-only": {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
    },
    "lora-flux": {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 8),
    },
    "embedding-sd15": {"emb_params": (2, 768)},
    "embedding-sd2": {"emb_params": (2, 1024)},
    "embedding-sdxl": {"clip_l": (2, 768), "clip_g": (2, 1280)},
    "vae-unknown": {"decoder.conv_in.weight": (4, 4), "encoder.conv_in.weight": (4, 3)},
}

KIND_DIRS = {"checkpoint": "checkpoints", "lora": "loras", "embedding": "embeddings", "vae": "vae"}


def model_bytes(spec: str, metadata: dict[str, str] | None = None, seed: int = 0) -> bytes:
    """The bytes of a tiny safetensors file (``seed`` makes distinct hashes for the same layout)."""
    import os
    import tempfile

    tensors = {name: np.full(shape, seed % 7, dtype=np.float16) for name, shape in SPECS[spec].items()}
    fd, tmp = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def write_model(models_dir: Path, spec: str, file_name: str | None = None, **kwargs: object) -> Path:
    """Write ``spec`` under its kind folder; returns the path."""
    kind = spec.split("-")[0]
    path = models_dir / KIND_DIRS[kind] / (file_name or f"{spec}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model_bytes(spec, **kwargs))  # type: ignore[arg-type]
    return path


def raw_safetensors(header: dict[str, object], data: bytes) -> bytes:
    """Hand-built safetensors bytes (for corrupt or truncated cases the library would refuse)."""
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data
