"""Small deterministic SD1.5-shaped models that the real A1111 loads and runs in seconds on a CPU.

Run with A1111's own Python (it builds the models with A1111's ``ldm`` code, so keys and buffers are those
of a real SD1.x checkpoint, only narrower)::

    $A1111_PYTHON scripts/a1111_test_models.py MODELS_DIR --webui $A1111_DIR

writes, in the worker's volume layout::

    MODELS_DIR/checkpoints/tiny_a.safetensors + tiny_a.yaml   SD1.x layout, 32 channels, 4-layer text encoder
    MODELS_DIR/checkpoints/tiny_b.safetensors + tiny_b.yaml   same shapes, other weights (switching)
    MODELS_DIR/loras/tiny_lora.safetensors                    kohya LoRA (ss_output_name tiny_lora_v1)
    MODELS_DIR/embeddings/tiny_emb.safetensors                textual inversion, 2 vectors
    MODELS_DIR/vae/tiny_vae.safetensors                       standalone VAE for the checkpoints' shapes
    MODELS_DIR/tiny-text-encoder/                             tokenizer (CLIP's own BPE) + text encoder config

A1111 reads ``<checkpoint stem>.yaml`` beside a checkpoint as its model config, so nothing in A1111 is
changed. The tokenizer is CLIP's (built from the BPE file the ``clip`` package ships), so prompt
parsing, token counting and embeddings behave as with a real SD1.5. Nothing is downloaded. The same
seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("a1111_test_models")

TEXT_HIDDEN = 32
TEXT_LAYERS = 4
UNET_CHANNELS = 32
LORA_RANK = 4


def unet_config() -> dict[str, Any]:
    # SD1.x block structure (so kohya LoRA names map exactly as for a real SD1.5), narrower.
    return {
        "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": {
            "image_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": UNET_CHANNELS,
            "attention_resolutions": [4, 2, 1],
            "num_res_blocks": 2,
            "channel_mult": [1, 2, 4, 4],
            "num_heads": 2,
            "use_spatial_transformer": True,
            "transformer_depth": 1,
            "context_dim": TEXT_HIDDEN,
            "use_checkpoint": False,
            "legacy": False,
        },
    }


def vae_config() -> dict[str, Any]:
    return {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "embed_dim": 4,
            "monitor": "val/rec_loss",
            "ddconfig": {
                "double_z": True,
                "z_channels": 4,
                "resolution": 256,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 32,
                "ch_mult": [1, 2, 4, 4],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
            },
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }


def model_config(text_encoder_dir: Path) -> dict[str, Any]:
    """v1-inference.yaml with small UNet/VAE/text encoder (the same keys A1111's SD1 config has)."""
    return {
        "model": {
            "base_learning_rate": 1.0e-04,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.00085,
                "linear_end": 0.0120,
                "num_timesteps_cond": 1,
                "log_every_t": 200,
                "timesteps": 1000,
                "first_stage_key": "jpg",
                "cond_stage_key": "txt",
                "image_size": 64,
                "channels": 4,
                "cond_stage_trainable": False,
                "conditioning_key": "crossattn",
                "monitor": "val/loss_simple_ema",
                "scale_factor": 0.18215,
                "use_ema": False,
                "unet_config": unet_config(),
                "first_stage_config": vae_config(),
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                    "params": {"version": str(text_encoder_dir)},
                },
            },
        }
    }


def write_text_encoder(folder: Path) -> None:
    """CLIP's tokenizer files from the BPE list the ``clip`` package ships, plus a small text config."""
    import clip  # A1111's environment always has it (prepare_environment installs openai CLIP)
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    bpe = Path(clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as packed:
        lines = packed.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {token: index for index, token in enumerate(vocab)}
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    files = {
        "vocab.json": json.dumps(encoder, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps({**special, "pad_token": "<|endoftext|>"}),
        "tokenizer_config.json": json.dumps(
            {
                **special,
                "pad_token": "<|endoftext|>",
                "add_prefix_space": False,
                "errors": "replace",
                "do_lower_case": True,
                "model_max_length": 77,
                "tokenizer_class": "CLIPTokenizer",
            }
        ),
        "config.json": json.dumps(
            {
                "architectures": ["CLIPTextModel"],
                "model_type": "clip_text_model",
                "hidden_size": TEXT_HIDDEN,
                "intermediate_size": TEXT_HIDDEN * 2,
                "num_attention_heads": 2,
                "num_hidden_layers": TEXT_LAYERS,
                "max_position_embeddings": 77,
                "vocab_size": len(encoder),
                "hidden_act": "quick_gelu",
                "projection_dim": TEXT_HIDDEN,
                "layer_norm_eps": 1e-05,
                "bos_token_id": 49406,
                "eos_token_id": 49407,
                "pad_token_id": 1,
            }
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def sort_metadata(path: Path) -> None:
    """safetensors writes ``__metadata__`` in hash-map order (random per process); sort it in place."""
    with path.open("r+b") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        file.seek(8)
        file.write(text + b" " * (size - len(text)))


def build(models: Path, webui: Path, seed: int) -> None:
    sys.path.insert(0, str(webui / "repositories" / "stable-diffusion-stability-ai"))
    import safetensors.torch
    import torch
    import transformers
    import yaml
    from omegaconf import OmegaConf

    try:
        import pytorch_lightning.utilities.distributed
    except ImportError:  # the shim A1111 applies itself (initialize_util.fix_pytorch_lightning)
        import pytorch_lightning

        sys.modules["pytorch_lightning.utilities.distributed"] = pytorch_lightning.utilities.rank_zero
    from ldm.util import instantiate_from_config

    def from_config(cls: Any, name: str, *args: Any, **kwargs: Any) -> Any:  # random init, no weights
        return cls(transformers.CLIPTextConfig.from_pretrained(name))

    transformers.CLIPTextModel.from_pretrained = classmethod(from_config)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    text_dir = models / "tiny-text-encoder"
    write_text_encoder(text_dir)
    config = model_config(text_dir.resolve())
    for kind in ("checkpoints", "loras", "embeddings", "vae"):
        (models / kind).mkdir(parents=True, exist_ok=True)

    def half(state: dict[str, Any]) -> dict[str, Any]:
        return {
            key: (value.half() if value.is_floating_point() and key.split(".")[0] in parts else value)
            .contiguous()
            .clone()
            for key, value in state.items()
        }

    parts = ("model", "first_stage_model", "cond_stage_model")
    for offset, stem in enumerate(("tiny_a", "tiny_b")):
        torch.manual_seed(seed + 10 * offset)
        model = instantiate_from_config(OmegaConf.create(config).model).eval()
        generator = torch.Generator().manual_seed(seed + 10 * offset + 1)
        with torch.no_grad():
            for param in model.model.diffusion_model.parameters():
                if param.ndim >= 2 and not param.any():  # ldm's zero_module outputs: small random instead
                    param.copy_(
                        torch.randn(param.shape, generator=generator) * (0.5 / math.sqrt(param[0].numel()))
                    )
            # Trained CLIP has non-trivial LayerNorm affine parameters; with the default (1, 0) the
            # conditioning's mean is ~0 and A1111's "Original" emphasis divides by it (NansException).
            for module in model.cond_stage_model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.copy_(1 + 0.05 * torch.randn(module.weight.shape, generator=generator))
                    module.bias.copy_(0.2 + 0.05 * torch.randn(module.bias.shape, generator=generator))
        path = models / "checkpoints" / f"{stem}.safetensors"
        safetensors.torch.save_file(half(model.state_dict()), str(path), metadata={"format": "pt"})
        (models / "checkpoints" / f"{stem}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        log.info("checkpoint %s (%.1f MB)", path, path.stat().st_size / 1e6)
        del model

    torch.manual_seed(seed + 2)
    vae = instantiate_from_config(OmegaConf.create(vae_config()))
    vae_state = {k: v.half().contiguous() for k, v in vae.state_dict().items()}
    safetensors.torch.save_file(
        vae_state, str(models / "vae" / "tiny_vae.safetensors"), metadata={"format": "pt"}
    )

    generator = torch.Generator().manual_seed(seed + 3)
    modules: dict[str, tuple[int, int, bool]] = {}
    for block, mult in (
        ("down_blocks_0_attentions_0", 1),
        ("mid_block_attentions_0", 4),
        ("up_blocks_3_attentions_2", 1),
    ):
        channels = UNET_CHANNELS * mult
        prefix = f"lora_unet_{block}"
        modules[f"{prefix}_proj_in"] = (channels, channels, True)
        modules[f"{prefix}_proj_out"] = (channels, channels, True)
        for attention in ("attn1", "attn2"):
            for weight in ("to_q", "to_k", "to_v", "to_out_0"):
                fan_in = TEXT_HIDDEN if attention == "attn2" and weight in ("to_k", "to_v") else channels
                modules[f"{prefix}_transformer_blocks_0_{attention}_{weight}"] = (channels, fan_in, False)
    for layer in range(TEXT_LAYERS):
        for weight in ("q_proj", "k_proj", "v_proj", "out_proj"):
            modules[f"lora_te_text_model_encoder_layers_{layer}_self_attn_{weight}"] = (
                TEXT_HIDDEN,
                TEXT_HIDDEN,
                False,
            )
    lora: dict[str, Any] = {}
    for key, (out_features, in_features, conv) in sorted(modules.items()):
        down = torch.randn(LORA_RANK, in_features, generator=generator) / math.sqrt(in_features)
        up = torch.randn(out_features, LORA_RANK, generator=generator) * 2.0
        if conv:
            down, up = down[:, :, None, None], up[:, :, None, None]
        lora[f"{key}.lora_down.weight"] = down.half().contiguous()
        lora[f"{key}.lora_up.weight"] = up.half().contiguous()
        lora[f"{key}.alpha"] = torch.tensor(float(LORA_RANK)).half()
    metadata = {
        "ss_output_name": "tiny_lora_v1",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(LORA_RANK),
        "ss_network_alpha": str(float(LORA_RANK)),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "tiny_a.safetensors",
        "modelspec.architecture": "stable-diffusion-v1/lora",
    }
    lora_path = models / "loras" / "tiny_lora.safetensors"
    safetensors.torch.save_file(lora, str(lora_path), metadata=metadata)
    sort_metadata(lora_path)

    generator = torch.Generator().manual_seed(seed + 4)
    embedding = (torch.randn(2, TEXT_HIDDEN, generator=generator) * 0.5).contiguous()
    safetensors.torch.save_file(
        {"emb_params": embedding}, str(models / "embeddings" / "tiny_emb.safetensors")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--webui", type=Path, default=Path(os.environ.get("A1111_DIR", ".")))
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.webui / "repositories" / "stable-diffusion-stability-ai").is_dir():
        parser.error(
            f"--webui {args.webui} is not an A1111 install (no repositories/stable-diffusion-stability-ai)"
        )
    started = time.monotonic()
    build(args.models_dir, args.webui, args.seed)
    log.info("tiny models in %s (%.1f s)", args.models_dir, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
