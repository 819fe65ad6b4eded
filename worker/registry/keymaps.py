"""Tensor names between the diffusers/PEFT layouts and A1111's (LDM/CompVis single files, kohya LoRAs).

Everything here is about *names* (and, for a few tensors, shapes): data tables plus small pure
functions, tested table-driven. The UNet and VAE tables are generated from the component's diffusers
config, so they hold for any block count and ``layers_per_block`` (the tiny test models as well as
real SD1.5 and SDXL). The converters (``worker.registry.convert``) apply them to tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Renames = tuple[tuple[str, str], ...]

#: diffusers ResnetBlock2D sub-modules -> LDM ResBlock (UNet)
UNET_RESNET: Renames = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
#: diffusers ResnetBlock2D -> LDM ResnetBlock (VAE): only the shortcut differs
VAE_RESNET: Renames = (("conv_shortcut", "nin_shortcut"),)
#: diffusers VAE mid-block attention -> LDM AttnBlock (1x1 convolutions there, linear layers here)
VAE_ATTENTION: Renames = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)
#: names older diffusers versions saved for the same VAE attention layers (read, never written)
VAE_ATTENTION_LEGACY: Renames = (("query", "q"), ("key", "k"), ("value", "v"), ("proj_attn", "proj_out"))

#: where each component of an SD1.x / SDXL pipeline lives in an A1111 single file
LDM_PREFIX = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "sd15.text_encoder": "cond_stage_model.transformer.",
    "sdxl.text_encoder": "conditioner.embedders.0.transformer.",
    "sdxl.text_encoder_2": "conditioner.embedders.1.model.",
}


@dataclass(frozen=True)
class Block:
    """One diffusers sub-tree and its LDM counterpart; ``renames`` apply to the first level below."""

    diffusers: str
    ldm: str
    renames: Renames = ()


def _layers(config: dict[str, Any]) -> int:
    layers = config.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise ValueError(f"layers_per_block={layers!r} (a per-block list) has no LDM layout")
    return layers


def unet_blocks(config: dict[str, Any]) -> list[Block]:
    """The UNet's block table for a ``UNet2DConditionModel`` config (SD1.x, SD2.x, SDXL, tiny variants)."""
    layers = _layers(config)
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    blocks = [
        Block("time_embedding.linear_1", "time_embed.0"),
        Block("time_embedding.linear_2", "time_embed.2"),
        Block("add_embedding.linear_1", "label_emb.0.0"),
        Block("add_embedding.linear_2", "label_emb.0.2"),
        Block("conv_in", "input_blocks.0.0"),
        Block("conv_norm_out", "out.0"),
        Block("conv_out", "out.2"),
        Block("mid_block.resnets.0", "middle_block.0", UNET_RESNET),
        Block("mid_block.attentions.0", "middle_block.1"),
        Block("mid_block.resnets.1", "middle_block.2", UNET_RESNET),
    ]
    for i in range(len(down_types)):
        for j in range(layers):
            ldm = 1 + i * (layers + 1) + j
            blocks.append(Block(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{ldm}.0", UNET_RESNET))
            if "CrossAttn" in down_types[i]:
                blocks.append(Block(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{ldm}.1"))
        blocks.append(
            Block(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (layers + 1)}.0.op")
        )
    for i, block_type in enumerate(up_types):
        for j in range(layers + 1):
            ldm = i * (layers + 1) + j
            blocks.append(Block(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{ldm}.0", UNET_RESNET))
            if "CrossAttn" in block_type:
                blocks.append(Block(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{ldm}.1"))
        upsampler = 2 if "CrossAttn" in block_type else 1
        blocks.append(
            Block(
                f"up_blocks.{i}.upsamplers.0.conv",
                f"output_blocks.{i * (layers + 1) + layers}.{upsampler}.conv",
            )
        )
    return blocks


def vae_blocks(config: dict[str, Any]) -> list[Block]:
    """The ``AutoencoderKL`` block table (decoder up-blocks are numbered in reverse in LDM)."""
    layers = _layers(config)
    n = len(config["down_block_types"])
    same = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv")
    blocks = [Block(name, name) for name in (*same, "post_quant_conv")]
    for part in ("encoder", "decoder"):
        blocks += [
            Block(f"{part}.conv_norm_out", f"{part}.norm_out"),
            Block(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET),
            Block(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET),
            Block(
                f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION + VAE_ATTENTION_LEGACY
            ),
        ]
    for i in range(n):
        for j in range(layers):
            blocks.append(
                Block(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET)
            )
        blocks.append(
            Block(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        )
        for j in range(layers + 1):
            blocks.append(
                Block(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", VAE_RESNET)
            )
        blocks.append(
            Block(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv")
        )
    return blocks


def _rename(rest: str, renames: Iterable[tuple[str, str]]) -> str:
    for old, new in renames:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


class BlockMap:
    """Maps tensor or module names both ways through a block table (longest dotted prefix wins)."""

    def __init__(self, blocks: list[Block]) -> None:
        self._to_ldm = {b.diffusers: b for b in blocks}
        self._to_diffusers = {b.ldm: b for b in blocks}

    @staticmethod
    def _lookup(name: str, table: dict[str, Block]) -> tuple[Block, str] | None:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            block = table.get(".".join(parts[:cut]))
            if block is not None:
                return block, ".".join(parts[cut:])
        return None

    def to_ldm(self, name: str) -> str | None:
        found = self._lookup(name, self._to_ldm)
        if found is None:
            return None
        block, rest = found
        rest = _rename(rest, block.renames)
        return f"{block.ldm}.{rest}" if rest else block.ldm

    def to_diffusers(self, name: str) -> str | None:
        found = self._lookup(name, self._to_diffusers)
        if found is None:
            return None
        block, rest = found
        # only the current names are written (the legacy VAE names map one way)
        rest = _rename(rest, tuple((new, old) for old, new in block.renames if old not in _LEGACY_NAMES))
        return f"{block.diffusers}.{rest}" if rest else block.diffusers


_LEGACY_NAMES = frozenset(old for old, _ in VAE_ATTENTION_LEGACY)


def is_vae_attention_matrix(ldm_name: str, shape: tuple[int, ...]) -> bool:
    """LDM stores the VAE mid attention's q/k/v/proj_out as 1x1 convolutions, diffusers as linear layers."""
    return (
        ".mid.attn_1." in ldm_name
        and ldm_name.endswith(".weight")
        and len(shape) in (2, 4)
        and (ldm_name.rsplit(".", 2)[-2] in {"q", "k", "v", "proj_out"})
    )


# ---- text encoders --------------------------------------------------------------------------------


def clip_to_hf(name: str) -> str:
    """HF ``CLIPTextModel`` names, with ``text_model.`` (transformers >= 5.6 may save them without it)."""
    return name if name.startswith(("text_model.", "text_projection.")) else "text_model." + name


#: OpenCLIP (LDM ``conditioner.embedders.1.model.*``) <-> HF ``CLIPTextModelWithProjection``, per layer
OPEN_CLIP_LAYER: Renames = (
    ("attn.out_proj", "self_attn.out_proj"),
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)
OPEN_CLIP_TOP: Renames = (
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    # stored transposed in OpenCLIP (x @ P) versus a Linear layer's weight in HF (P^T)
    ("text_projection", "text_projection.weight"),
)
#: OpenCLIP tensors with no HF counterpart (not used for text conditioning)
OPEN_CLIP_UNUSED = frozenset({"logit_scale"})
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")


def open_clip_to_hf(name: str) -> str | tuple[str, str, str] | None:
    """An OpenCLIP tensor's HF name; the fused ``attn.in_proj_*`` gives ``(layer prefix, "qkv", kind)``."""
    for old, new in OPEN_CLIP_TOP:
        if name == old:
            return new
    m = _RESBLOCK.match(name)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"text_model.encoder.layers.{layer}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        return prefix, "qkv", rest.rsplit("_", 1)[-1]
    renamed = _rename(rest, OPEN_CLIP_LAYER)
    return prefix + renamed if renamed != rest else None


def hf_to_open_clip(name: str) -> str | tuple[str, str, str] | None:
    """The inverse of ``open_clip_to_hf``; q/k/v projections give ``(resblock prefix, "q"|"k"|"v", kind)``."""
    name = clip_to_hf(name)
    for old, new in OPEN_CLIP_TOP:
        if name == new:
            return old
    m = _HF_LAYER.match(name)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"transformer.resblocks.{layer}."
    qkv = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
    if qkv:
        return prefix, qkv[1], qkv[2]
    renamed = _rename(rest, tuple((new, old) for old, new in OPEN_CLIP_LAYER))
    return prefix + renamed if renamed != rest else None


# ---- LoRA layouts -------------------------------------------------------------------------------------

LoraLayout = Literal["kohya", "diffusers", "peft", "lycoris"]
LoraPart = Literal["down", "up", "alpha", "magnitude"]
Component = Literal["unet", "text_encoder", "text_encoder_2"]

#: kohya/A1111 key prefixes (the layout A1111's Lora extension reads)
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_LYCORIS_PARTS = (".hada_", ".lokr_", ".oft_", ".b_norm", ".w_norm", ".diff", ".lora_mid.")
_PEFT_PART = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[\w-]+))?\.weight$")
_PEFT_MAGNITUDE = re.compile(
    r"^(?P<module>.+)\.lora_magnitude_vector(?:\.(?P<adapter>[\w-]+))?(?:\.weight)?$"
)
_DIFFUSERS_PART = re.compile(
    r"^(?P<module>.+?)(?:\.processor)?\.(?P<lora>lora|lora_linear_layer|(?P<attn>to_q|to_k|to_v|to_out)_lora)"
    r"\.(?P<du>down|up)\.weight$"
)
_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
_COMPONENTS: tuple[Component, ...] = ("text_encoder_2", "text_encoder", "unet")
_UNET_ROOTS = (
    "down_blocks.",
    "mid_block.",
    "up_blocks.",
    "conv_in",
    "conv_out",
    "time_embedding.",
    "add_embedding.",
)
_TE_ROOTS = ("text_model.", "encoder.layers.", "embeddings.", "final_layer_norm", "text_projection")


def lora_layout(names: Iterable[str]) -> LoraLayout | None:
    """Which LoRA key layout a file uses, from its tensor names alone (None: not a LoRA)."""
    names = list(names)
    if any(n.startswith(KOHYA_PREFIXES) or n.startswith("lora_transformer_") for n in names):
        return "lycoris" if any(p in n for n in names for p in _LYCORIS_PARTS) else "kohya"
    if any(_PEFT_PART.match(n) for n in names):
        return (
            "diffusers"
            if any(n.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for n in names)
            else "peft"
        )
    if any(_DIFFUSERS_PART.match(n) for n in names):
        return "diffusers"
    return None


@dataclass(frozen=True)
class LoraKey:
    """One LoRA tensor, independent of its file layout."""

    component: Component | None  # None: not given by the name (a bare PEFT state)
    module: str  # the module path inside the component, diffusers/HF naming
    part: LoraPart


def _strip_component(name: str) -> tuple[Component | None, str]:
    for prefix in ("base_model.model.",):
        name = name.removeprefix(prefix)
    for component in _COMPONENTS:
        if name.startswith(component + "."):
            return component, name[len(component) + 1 :]
    return None, name


def parse_lora_key(name: str) -> LoraKey | None:
    """A diffusers/PEFT LoRA tensor name -> (component, module, part); None for a non-LoRA tensor."""
    component, rest = _strip_component(name)
    m = _PEFT_PART.match(rest)
    if m:
        return LoraKey(component, m["module"], "down" if m["ab"] == "A" else "up")
    m = _PEFT_MAGNITUDE.match(rest)
    if m:
        return LoraKey(component, m["module"], "magnitude")
    m = _DIFFUSERS_PART.match(rest)
    if m:
        module = m["module"]
        if m["attn"]:  # attention-processor LoRA (diffusers < 0.20): <attn>.processor.to_q_lora.down.weight
            module = f"{module}.{m['attn']}" + (".0" if m["attn"] == "to_out" else "")
        return LoraKey(component, module, "down" if m["du"] == "down" else "up")
    m = _ALPHA.match(rest)
    if m:
        return LoraKey(component, m["module"], "alpha")
    return None


def guess_component(module: str) -> Literal["unet", "text"] | None:
    """Which model a bare module path belongs to (the text encoder's number needs shapes)."""
    if module.startswith(_UNET_ROOTS):
        return "unet"
    if module.startswith(_TE_ROOTS):
        return "text"
    return None


def kohya_name(component: Component, module: str, *, sdxl: bool, unet_map: BlockMap) -> str:
    """kohya's module name, as kohya's own scripts write it: SD1.x UNet modules by their diffusers path
    (``lora_unet_down_blocks_0_…``), SDXL UNet modules by their LDM path (``lora_unet_input_blocks_4_1_…``,
    numbered from the base model's config), text encoders by their HF path. A1111 and diffusers read both."""
    if component == "unet":
        path = module
        if sdxl:
            ldm = unet_map.to_ldm(module)
            if ldm is None:
                raise ValueError(f"UNet module {module!r} has no LDM counterpart")
            path = ldm
        return "lora_unet_" + path.replace(".", "_")
    path = clip_to_hf(module).replace(".", "_")
    if component == "text_encoder":
        return ("lora_te1_" if sdxl else "lora_te_") + path
    if not sdxl:
        raise ValueError("a second text encoder only exists in SDXL")
    return "lora_te2_" + path


def peft_pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``alpha_pattern``/``rank_pattern``: each key is a regex matched at a module path's end."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default
