"""A small deterministic SD1-architecture checkpoint that both A1111 and the embedded engine load.

A1111 builds its model from the LDM config ``<checkpoint>.yaml`` placed beside the file, so a tiny UNet,
VAE and text encoder load there in seconds. LDM's layers fix GroupNorm at 32 groups and a latent factor of
8, so the tiny model keeps those (unlike the demo models). A1111 reads the text encoder's config and the
tokenizer from the folder the yaml names (``text/``): CLIP's vocabulary, as the engine reads it from openai-clip.

Beside it: a standalone VAE, a kohya LoRA and a textual-inversion embedding for the same architecture. The
LoRA covers the text encoder, the middle block and the up-block attentions only: A1111 maps SD1.5 LoRA names
with SD1.5's fixed block numbering, which places this small UNet's *down*-block attentions wrongly.

The same seeds give the same bytes on every run with the same torch version: the goldens record the files'
sha256, and the golden test says so when a different torch makes a different file (re-record then).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from diffusers_server.demo_models import TINY_TEXT, TINY_UNET
from worker.registry.pipeline_configs import vae_config

SEED = 11
NAME = "parity-sd15-tiny"
LORA = "parity-lora"
VAE = "parity-vae.safetensors"
EMBEDDING = "parity-emb"
TEXT = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **TINY_TEXT}
CONFIGS: dict[str, dict[str, Any]] = {
    # LDM's layers fix GroupNorm at 32 groups
    "unet": {**TINY_UNET, "norm_num_groups": 32, "cross_attention_dim": 32, "attention_head_dim": 2},
    "vae": vae_config(
        [32, 32, 32, 32], layers_per_block=1, norm_num_groups=32, sample_size=64, scaling_factor=0.18215
    ),
    "text_encoder": TINY_TEXT,
}
YAML = """model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 8
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 8
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [ 2 ]
        num_res_blocks: 1
        channel_mult: [ 1, 2 ]
        num_heads: 2
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 32
        use_checkpoint: False
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 64
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [ 1, 1, 1, 1 ]
          num_res_blocks: 1
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        version: {text_dir}
"""


def build() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The checkpoint's tensors (A1111's LDM keys) and safetensors metadata (the engine's configs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusers_server.demo_models import _contiguous, _metadata, _randomize_norms, _seeded
    from diffusers_server.models.ldm_keys import clip_to_ldm, unet_to_ldm, vae_to_ldm
    from worker.registry.pipeline_configs import CONFIG_METADATA_KEY

    with _seeded(SEED):
        unet = UNet2DConditionModel(**CONFIGS["unet"])
        vae = AutoencoderKL(**CONFIGS["vae"])
        te = CLIPTextModel(CLIPTextConfig(**CONFIGS["text_encoder"]))
        _randomize_norms(unet, vae, te)
        tensors = unet_to_ldm(unet.state_dict(), CONFIGS["unet"])
        tensors |= vae_to_ldm(vae.state_dict(), CONFIGS["vae"])
        tensors |= clip_to_ldm(te.state_dict(), "cond_stage_model.transformer.")
    tensors = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    metadata = _metadata("sd15", {CONFIG_METADATA_KEY: json.dumps(CONFIGS, sort_keys=True)})
    return _contiguous(tensors), metadata


def build_extras() -> dict[str, dict[str, torch.Tensor]]:
    """The VAE (LDM keys, no prefix), the LoRA (kohya keys) and the embedding (``emb_params``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusers_server.demo_models import _contiguous, _randomize_norms, _seeded
    from diffusers_server.models.ldm_keys import vae_to_ldm

    with _seeded(SEED + 1):
        vae = AutoencoderKL(**CONFIGS["vae"])
        _randomize_norms(vae)
        vae_tensors = vae_to_ldm(vae.state_dict(), CONFIGS["vae"], prefix="")
    with _seeded(SEED + 2):
        unet = UNet2DConditionModel(**CONFIGS["unet"])
        te = CLIPTextModel(CLIPTextConfig(**CONFIGS["text_encoder"]))
        targets = [
            ("lora_unet_" + name.replace(".", "_"), module)
            for name, module in unet.named_modules()
            if name.startswith(("mid_block.attentions.", "up_blocks.0.attentions."))
            and isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        ]
        targets += [
            ("lora_te_text_model_" + name.replace(".", "_"), module)
            for name, module in te.named_modules()
            if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))
        ]
        lora: dict[str, torch.Tensor] = {}
        rank = 4
        for key, module in targets:
            weight = module.weight
            tail = (1, 1) if weight.ndim == 4 else ()
            lora[f"{key}.lora_down.weight"] = (
                torch.randn(rank, weight.shape[1], *tail) / weight.shape[1] ** 0.5
            )
            lora[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, *tail) * 0.5
            lora[f"{key}.alpha"] = torch.tensor(float(rank))
        embedding = {"emb_params": torch.randn(2, TEXT["hidden_size"])}
    return {
        f"vae/{VAE}": _contiguous(vae_tensors),
        f"loras/{LORA}.safetensors": {k: v.to(torch.float16) for k, v in lora.items()},
        f"embeddings/{EMBEDDING}.safetensors": embedding,
    }


def write(models_dir: Path, with_a1111_files: bool = True) -> Path:
    """Write ``checkpoints/<NAME>.safetensors`` and the extras (and, for A1111, the yaml and text folder)."""
    from diffusers_server.demo_models import _metadata, save_file
    from diffusers_server.tokenizer import load_vocabulary

    checkpoints = models_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    path = checkpoints / f"{NAME}.safetensors"
    tensors, metadata = build()
    save_file(tensors, path, metadata)
    for rel, extra in build_extras().items():
        (models_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(extra, models_dir / rel, _metadata(rel.split("/")[0]))
    if with_a1111_files:
        text_dir = models_dir / f"{NAME}-text"
        load_vocabulary().write_folder(text_dir)
        (text_dir / "config.json").write_text(json.dumps(TEXT, indent=1), encoding="utf-8")
        (checkpoints / f"{NAME}.yaml").write_text(YAML.format(text_dir=text_dir.resolve()), encoding="utf-8")
    return path


def file_hashes(models_dir: Path) -> dict[str, str]:
    """sha256 of the checkpoint and every extra, by path under ``models_dir`` (what the goldens record)."""
    rels = [f"checkpoints/{NAME}.safetensors", f"vae/{VAE}", f"loras/{LORA}.safetensors"]
    rels.append(f"embeddings/{EMBEDDING}.safetensors")
    return {rel: sha256(models_dir / rel) for rel in rels}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
