"""Training outputs in their real key layouts, built with numpy (no torch): LoRA files, checkpoint-N folders,
and the json + header skeleton of a diffusers pipeline folder.

The LoRA modules carry real SD1.5/SDXL shapes (rank 2, so each file is small) and seeded random values,
so a converted file can be compared value by value with its source.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from worker.registry.pipeline_configs import REAL_CONFIGS, model_index

#: (component, module, in features, out features, conv) of a few real SD1.5 / SDXL LoRA targets
MODULES = {
    "sd15": [
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 320, 320, False),
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 768, 320, False),
        ("unet", "mid_block.attentions.0.proj_in", 1280, 1280, True),
        ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", 768, 768, False),
    ],
    "sdxl": [
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 640, 640, False),
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", 2048, 640, False),
        ("text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj", 1280, 1280, False),
    ],
}


def lora_tensors(
    arch: str = "sd15", *, layout: str = "peft", rank: int = 2, seed: int = 0, adapter: str = ""
) -> dict[str, np.ndarray]:
    """``layout``: ``diffusers`` (``unet.``/``text_encoder.`` prefixes), ``peft`` (bare), ``old``
    (diffusers' ``lora.down``/``lora_linear_layer``), ``kohya``-free on purpose."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for component, module, fan_in, fan_out, conv in MODULES[arch]:
        tail = (1, 1) if conv else ()
        down = rng.standard_normal((rank, fan_in, *tail)).astype(np.float16)
        up = rng.standard_normal((fan_out, rank, *tail)).astype(np.float16)
        suffix = f".{adapter}" if adapter else ""
        if layout == "old":
            part = "lora_linear_layer" if component != "unet" else "lora"
            tensors[f"{component}.{module}.{part}.down.weight"] = down
            tensors[f"{component}.{module}.{part}.up.weight"] = up
            continue
        prefix = f"{component}." if layout == "diffusers" else ""
        tensors[f"{prefix}{module}.lora_A{suffix}.weight"] = down
        tensors[f"{prefix}{module}.lora_B{suffix}.weight"] = up
    return tensors


def write_lora(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_training_checkpoint(folder: Path, step_seed: int = 0) -> Path:
    """What accelerate's ``save_state`` leaves for a UNet LoRA run: the full model state (base weights and
    ``lora_A.default`` adapters) plus optimizer, scheduler and RNG state (pickles never opened here)."""
    tensors = {
        k: v for k, v in lora_tensors(seed=step_seed, adapter="default").items() if "text_model" not in k
    }
    tensors["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.base_layer.weight"] = np.zeros(
        (320, 768), dtype=np.float16
    )
    write_lora(folder / "model.safetensors", tensors)
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (folder / name).write_bytes(b"\x80\x04not-opened")
    return folder


def write_pipeline_skeleton(folder: Path, arch: str = "sd15") -> Path:
    """A diffusers folder's json files and (tiny, shape-only) weight headers: enough to recognise, not to run."""
    configs = REAL_CONFIGS[arch]  # type: ignore[index]
    (folder).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(model_index(arch)))  # type: ignore[arg-type]
    for component, config in configs.items():
        sub = folder / component
        sub.mkdir()
        (sub / "config.json").write_text(json.dumps(config))
        weights = "model" if "text" in component else "diffusion_pytorch_model"
        save_file({"probe.weight": np.zeros((2, 2), dtype=np.float16)}, str(sub / f"{weights}.safetensors"))
    return folder
