"""``make-demo-models``: tiny random-weight models in A1111's single-file layouts.

They exist so the whole product runs end to end on a CPU-only machine in milliseconds per image. Their
weights are random (seeded, so every run writes identical files): the images they make are noise. Every file
says so in its safetensors metadata, and ``README.txt`` in the target folder repeats it.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from worker.registry.pipeline_configs import CONFIG_METADATA_KEY, PipelineKind, clip_text_config, vae_config

from .models.ldm_keys import Tensors, clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

log = logging.getLogger(__name__)

SD15_NAME = "demo-sd15-tiny"
SDXL_NAME = "demo-sdxl-tiny"
LORA_NAME = "demo-lora-tiny"
EMBEDDING_NAME = "demo-embedding-tiny"
VAE_NAME = "demo-vae-tiny"
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS for tests and demos: images from this model are noise."

_VAE = vae_config([8, 8, 8, 8], layers_per_block=1, norm_num_groups=4, sample_size=64, scaling_factor=0.18215)
#: the tiny UNet's shape (the parity model reuses it with LDM's 32 norm groups)
TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
}
#: CLIP's real vocabulary (ids as ``tokenizer.py`` reads them) on a tiny encoder: real token counts
TINY_TEXT = clip_text_config(32, 37, heads=4, layers=3)
TINY_CONFIGS: dict[PipelineKind, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": {**TINY_UNET, "cross_attention_dim": 32, "attention_head_dim": 4},
        "vae": _VAE,
        "text_encoder": TINY_TEXT,
    },
    "sdxl": {
        "unet": {
            **TINY_UNET,
            "cross_attention_dim": 96,
            "attention_head_dim": [2, 4],
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 64,
        },
        "vae": {**_VAE, "scaling_factor": 0.13025},
        "text_encoder": TINY_TEXT,
        # A hidden size unlike the first encoder's, as in real SDXL: diffusers tells them apart by shape.
        # A 4x MLP, as open_clip builds it (A1111 loads this encoder with open_clip).
        "text_encoder_2": clip_text_config(64, 256, heads=4, layers=3, hidden_act="gelu"),
    },
}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed module initialisation without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomize_norms(*modules: torch.nn.Module) -> None:
    """Fresh norm layers are exactly (1, 0): every token's features would be zero-mean, unlike real ones."""
    for root in modules:
        for module in root.modules():
            if isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm) and module.weight is not None:
                torch.nn.init.normal_(module.weight, 1.0, 0.1)
                torch.nn.init.normal_(module.bias, 0.0, 0.1)


def _metadata(kind: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "diffusers_server.random_weights": "true",
        "diffusers_server.kind": kind,
        "note": RANDOM_WEIGHTS_NOTE,
    } | (extra or {})


def _contiguous(tensors: Tensors) -> Tensors:
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def build_checkpoint(kind: PipelineKind, seed: int) -> tuple[Tensors, dict[str, str]]:
    """Random-weight tiny checkpoint in A1111's LDM key layout, plus its metadata."""
    configs = TINY_CONFIGS[kind]
    with _seeded(seed):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        te = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        _randomize_norms(unet, vae, te)
        tensors = unet_to_ldm(unet.state_dict(), configs["unet"]) | vae_to_ldm(
            vae.state_dict(), configs["vae"]
        )
        if kind == "sd15":
            tensors |= clip_to_ldm(te.state_dict(), "cond_stage_model.transformer.")
        else:
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
            _randomize_norms(te2)
            tensors |= clip_to_ldm(te.state_dict(), "conditioner.embedders.0.transformer.")
            tensors |= open_clip_to_ldm(te2.state_dict(), "conditioner.embedders.1.model.")
    tensors = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    return _contiguous(tensors), _metadata(kind, {CONFIG_METADATA_KEY: json.dumps(configs, sort_keys=True)})


def build_vae(seed: int) -> Tensors:
    """A standalone tiny VAE as A1111's ``models/VAE`` files store it (LDM keys, no prefix)."""
    with _seeded(seed):
        vae = AutoencoderKL(**_VAE)
        _randomize_norms(vae)
    return _contiguous(vae_to_ldm(vae.state_dict(), _VAE, prefix=""))


def build_lora(seed: int, rank: int = 4) -> Tensors:
    """A kohya-format LoRA for the tiny SD1.5 model: UNet attention/FF/proj layers and text-encoder layers."""
    configs = TINY_CONFIGS["sd15"]
    with _seeded(seed):
        unet = UNet2DConditionModel(**configs["unet"])
        te = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        targets: list[tuple[str, torch.nn.Module]] = [
            ("lora_unet_" + name.replace(".", "_"), module)
            for name, module in unet.named_modules()
            if (
                ".transformer_blocks." in name
                and name.rsplit(".", 1)[-1] in {"to_q", "to_k", "to_v", "proj", "2"}
            )
            or name.endswith(("to_out.0", "proj_in", "proj_out"))
        ]
        targets += [
            ("lora_te_text_model_" + name.replace(".", "_"), module)
            for name, module in te.named_modules()
            if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))
        ]
        tensors: Tensors = {}
        for key, module in targets:
            weight = module.weight
            assert isinstance(weight, torch.Tensor)  # every target is a Linear or a Conv2d
            out_dim, in_dim = weight.shape[0], weight.shape[1]
            tail = (1, 1) if weight.ndim == 4 else ()
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_dim, *tail) / in_dim**0.5
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_dim, rank, *tail) * 0.5
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    return {k: v.to(torch.float16) for k, v in tensors.items()}


def build_embedding(seed: int, vectors: int = 2) -> Tensors:
    """A textual-inversion embedding for the tiny SD1.5 model (A1111's ``emb_params`` layout)."""
    width = TINY_CONFIGS["sd15"]["text_encoder"]["hidden_size"]
    generator = torch.Generator().manual_seed(seed)
    return {"emb_params": torch.randn(vectors, width, generator=generator)}


def save_file(tensors: Tensors, path: Path, metadata: dict[str, str]) -> None:
    """``safetensors`` writes its header from a hash map, so metadata order (and the file's sha256, hence the
    A1111 title) would change from run to run; re-emit the header with sorted keys: byte-identical files."""
    data = save(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


def make_demo_models(root: Path, sdxl: bool = False) -> dict[str, Path]:
    """Write the demo models under ``root`` in A1111's folder layout and return their paths."""
    paths = {
        "sd15": root / "checkpoints" / f"{SD15_NAME}.safetensors",
        "lora": root / "loras" / f"{LORA_NAME}.safetensors",
        "embedding": root / "embeddings" / f"{EMBEDDING_NAME}.safetensors",
        "vae": root / "vae" / f"{VAE_NAME}.safetensors",
    }
    if sdxl:
        paths["sdxl"] = root / "checkpoints" / f"{SDXL_NAME}.safetensors"
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    for kind, seed in (("sd15", 1), ("sdxl", 2)):
        if kind in paths:
            tensors, metadata = build_checkpoint(kind, seed)  # type: ignore[arg-type]
            save_file(tensors, paths[kind], metadata=metadata)
    save_file(build_vae(3), paths["vae"], metadata=_metadata("vae"))
    save_file(
        build_lora(4),
        paths["lora"],
        # kohya records the base model: the registry reports the LoRA as SD1.5 and refuses it on SDXL
        metadata=_metadata("lora", {"ss_output_name": LORA_NAME, "ss_base_model_version": "sd_v1"}),
    )
    save_file(build_embedding(5), paths["embedding"], metadata=_metadata("embedding"))
    lines = [RANDOM_WEIGHTS_NOTE, "", "Written by `python -m diffusers_server make-demo-models`:"]
    lines += [f"- {p.relative_to(root)}" for p in paths.values()]
    (root / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("wrote demo models to %s: %s", root, ", ".join(p.name for p in paths.values()))
    return paths
