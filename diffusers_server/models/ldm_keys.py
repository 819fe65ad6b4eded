"""diffusers → A1111/LDM (CompVis) state-dict key conversion, for any UNet/VAE depth.

diffusers only ships the LDM → diffusers direction (used by ``from_single_file``); its reverse
scripts hard-code the real SD layer counts. The demo-model writer needs the reverse for tiny models,
so this module implements it for any ``layers_per_block`` and block count, mirroring what
``diffusers.loaders.single_file_utils`` expects.
"""

from __future__ import annotations

from typing import Any

import torch

Tensors = dict[str, torch.Tensor]

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _move(src: Tensors, dst: Tensors, old: str, new: str, rename: dict[str, str] | None = None) -> None:
    """Move every ``old.*`` key to ``new.*``, renaming the first sub-module through ``rename``."""
    for key in [k for k in src if k.startswith(old + ".")]:
        rest = key[len(old) + 1 :]
        for d_name, l_name in (rename or {}).items():
            if rest.startswith(d_name + "."):
                rest = l_name + rest[len(d_name) :]
                break
        dst[f"{new}.{rest}"] = src.pop(key)


def unet_to_ldm(state: Tensors, config: dict[str, Any]) -> Tensors:
    """Convert a diffusers ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` keys."""
    src = dict(state)
    out: Tensors = {}
    layers = int(config["layers_per_block"])
    n_blocks = len(config["down_block_types"])
    simple = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for d_name, l_name in simple.items():
        _move(src, out, d_name, l_name)
    for i in range(n_blocks):
        for j in range(layers):
            ldm = 1 + i * (layers + 1) + j
            _move(src, out, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{ldm}.0", _UNET_RESNET)
            _move(src, out, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{ldm}.1")
        _move(src, out, f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (layers + 1)}.0.op")
    _move(src, out, "mid_block.resnets.0", "middle_block.0", _UNET_RESNET)
    _move(src, out, "mid_block.attentions.0", "middle_block.1")
    _move(src, out, "mid_block.resnets.1", "middle_block.2", _UNET_RESNET)
    for i, block_type in enumerate(config["up_block_types"]):
        has_attention = "CrossAttn" in block_type
        for j in range(layers + 1):
            ldm = i * (layers + 1) + j
            _move(src, out, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{ldm}.0", _UNET_RESNET)
            _move(src, out, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{ldm}.1")
        last = i * (layers + 1) + layers
        _move(
            src,
            out,
            f"up_blocks.{i}.upsamplers.0.conv",
            f"output_blocks.{last}.{2 if has_attention else 1}.conv",
        )
    if src:
        raise ValueError(f"UNet keys without an LDM equivalent: {sorted(src)[:5]}")
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def vae_to_ldm(state: Tensors, config: dict[str, Any], prefix: str = "first_stage_model.") -> Tensors:
    """Convert a diffusers ``AutoencoderKL`` state dict to LDM keys (attention as 1x1 convolutions)."""
    src = dict(state)
    out: Tensors = {}
    resnet = {"conv_shortcut": "nin_shortcut"}
    n_blocks = len(config["down_block_types"])
    for name in ("conv_in", "conv_out", "quant_conv", "post_quant_conv"):
        for part in ("encoder.", "decoder.", ""):
            _move(src, out, part + name, part + name)
    for part in ("encoder", "decoder"):
        _move(src, out, f"{part}.conv_norm_out", f"{part}.norm_out")
        _move(src, out, f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", resnet)
        _move(src, out, f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", resnet)
        _move(src, out, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTENTION)
    for i in range(n_blocks):
        for j in range(int(config["layers_per_block"]) + 1):
            _move(src, out, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", resnet)
            _move(
                src,
                out,
                f"decoder.up_blocks.{i}.resnets.{j}",
                f"decoder.up.{n_blocks - 1 - i}.block.{j}",
                resnet,
            )
        _move(src, out, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        _move(
            src,
            out,
            f"decoder.up_blocks.{i}.upsamplers.0.conv",
            f"decoder.up.{n_blocks - 1 - i}.upsample.conv",
        )
    if src:
        raise ValueError(f"VAE keys without an LDM equivalent: {sorted(src)[:5]}")
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return {prefix + k: v for k, v in out.items()}


def clip_to_ldm(state: Tensors, prefix: str) -> Tensors:
    """CLIP-L text encoder (HF layout) → ``<prefix>text_model.*`` as A1111 files store it."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def open_clip_to_ldm(state: Tensors, prefix: str) -> Tensors:
    """SDXL's second text encoder (HF ``CLIPTextModelWithProjection``) → OpenCLIP keys under ``prefix``."""
    src = {k.removeprefix("text_model."): v for k, v in state.items()}
    out: Tensors = {
        "positional_embedding": src.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": src.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": src.pop("final_layer_norm.weight"),
        "ln_final.bias": src.pop("final_layer_norm.bias"),
        "text_projection": src.pop("text_projection.weight").T.contiguous(),
    }
    src.pop("embeddings.position_ids", None)
    layer_ids = sorted({int(k.split(".")[2]) for k in src if k.startswith("encoder.layers.")})
    for i in layer_ids:
        hf, oc = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{kind}"] = torch.cat(
                [src.pop(f"{hf}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
            out[f"{oc}attn.out_proj.{kind}"] = src.pop(f"{hf}self_attn.out_proj.{kind}")
            out[f"{oc}ln_1.{kind}"] = src.pop(f"{hf}layer_norm1.{kind}")
            out[f"{oc}ln_2.{kind}"] = src.pop(f"{hf}layer_norm2.{kind}")
            out[f"{oc}mlp.c_fc.{kind}"] = src.pop(f"{hf}mlp.fc1.{kind}")
            out[f"{oc}mlp.c_proj.{kind}"] = src.pop(f"{hf}mlp.fc2.{kind}")
    if src:
        raise ValueError(f"OpenCLIP keys without an LDM equivalent: {sorted(src)[:5]}")
    return {prefix + k: v for k, v in out.items()}
