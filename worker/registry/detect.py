"""Kind and architecture detection from tensor names, shapes and metadata: two data tables, one pure function.

Order matters in both tables: the first matching rule wins, structural evidence (keys, shapes) comes
before metadata because trainers sometimes write wrong metadata. This is the one definition of "which
architecture is this file": the scan, the converters and the embedded engine (``checkpoint_pipeline``)
all ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from worker.model_types import Architecture, ModelType
from worker.registry.pipeline_configs import PipelineKind
from worker.registry.safetensors_header import TensorInfo
from worker.registry.upscalers import FAMILY_KEYS

MatchType = Literal["prefix", "contains", "key", "shape", "meta"]


@dataclass(frozen=True)
class Rule:
    """``match``: prefix/contains/key test tensor names; shape tests ``shape[dim] == value`` for keys
    containing ``text``; meta tests ``metadata[meta_key]`` starting with ``text`` (case-insensitive)."""

    result: str
    match: MatchType
    text: str
    dim: int = 0
    value: int = 0
    meta_key: str = ""


# (kind, rule); a file's kind is the first rule that matches.
_KIND_TABLE: tuple[tuple[ModelType, MatchType, str], ...] = (
    # ControlNets: the published ldm layout, diffusers' ControlNetModel, and unprefixed ldm ones
    ("controlnet", "prefix", "control_model."),
    ("controlnet", "prefix", "controlnet_cond_embedding."),
    ("controlnet", "prefix", "input_hint_block."),
    ("lora", "prefix", "lora_unet_"),
    ("lora", "prefix", "lora_te_"),
    ("lora", "prefix", "lora_te1_"),
    ("lora", "prefix", "lora_te2_"),
    ("lora", "prefix", "lora_transformer_"),
    ("lora", "contains", ".lora_down."),
    ("lora", "contains", ".lora.down."),
    ("lora", "contains", ".lora_A."),
    ("lora", "contains", "_lora.down."),  # diffusers' attention-processor LoRAs (to_q_lora.down)
    ("lora", "contains", ".lora_linear_layer.down."),
    ("lora", "contains", ".hada_w1_a"),
    ("lora", "contains", ".lokr_w1"),
    ("embedding", "key", "emb_params"),
    ("embedding", "key", "clip_l"),
    ("embedding", "key", "clip_g"),
    ("embedding", "prefix", "string_to_param"),
    ("checkpoint", "prefix", "model.diffusion_model."),
    ("checkpoint", "prefix", "double_blocks."),
    ("checkpoint", "prefix", "joint_blocks."),
    ("vae", "prefix", "first_stage_model.decoder."),
    ("vae", "prefix", "decoder.conv_in."),
    ("vae", "prefix", "encoder.conv_in."),
    # ESRGAN-family upscalers, last: their generic names (``body.0.weight``) must not shadow the others
    *(("upscaler", "key", key) for _, key in FAMILY_KEYS),
)
KIND_RULES: tuple[tuple[ModelType, Rule], ...] = tuple(
    (kind, Rule(kind, match, text)) for kind, match, text in _KIND_TABLE
)

_META_ARCH: tuple[tuple[str, str, str], ...] = (
    # (architecture, metadata key, value prefix)
    ("sdxl_refiner", "modelspec.architecture", "stable-diffusion-xl-v1-refiner"),
    ("sdxl", "modelspec.architecture", "stable-diffusion-xl"),
    ("sd2", "modelspec.architecture", "stable-diffusion-v2"),
    ("sd15", "modelspec.architecture", "stable-diffusion-v1"),
    ("sd3", "modelspec.architecture", "stable-diffusion-v3"),
    ("flux", "modelspec.architecture", "flux"),
    ("sdxl", "ss_base_model_version", "sdxl"),
    ("sd2", "ss_base_model_version", "sd_v2"),
    ("sd15", "ss_base_model_version", "sd_v1"),
    ("sd3", "ss_base_model_version", "sd3"),
    ("flux", "ss_base_model_version", "flux"),
)
_META_RULES = tuple(Rule(arch, "meta", text, meta_key=key) for arch, key, text in _META_ARCH)


def _shape_rules(text: str, dim: int, by_value: Mapping[int, str]) -> tuple[Rule, ...]:
    return tuple(Rule(arch, "shape", text, dim, value) for value, arch in by_value.items())


#: Cross-attention context width: 768 = CLIP-L (SD1.x), 1024 = OpenCLIP-H (SD2.x),
#: 2048 = CLIP-L + bigG (SDXL base), 1280 = bigG only (SDXL refiner).
CONTEXT_WIDTHS: dict[int, Architecture] = {768: "sd15", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}

ARCH_RULES: dict[ModelType, tuple[Rule, ...]] = {
    "checkpoint": (
        Rule("flux", "prefix", "model.diffusion_model.double_blocks."),
        Rule("flux", "prefix", "double_blocks."),
        Rule("sd3", "prefix", "model.diffusion_model.joint_blocks."),
        Rule("sd3", "prefix", "joint_blocks."),
        Rule("sdxl", "prefix", "conditioner.embedders.1.model."),
        Rule("sdxl_refiner", "prefix", "conditioner.embedders.0.model."),
        *_shape_rules("attn2.to_k.weight", 1, CONTEXT_WIDTHS),
        Rule("sd2", "prefix", "cond_stage_model.model."),
        Rule("sd15", "prefix", "cond_stage_model.transformer."),
        *_META_RULES,
    ),
    "lora": (
        Rule("flux", "prefix", "lora_unet_double_blocks_"),
        Rule("flux", "prefix", "lora_unet_single_blocks_"),
        Rule("flux", "prefix", "lora_transformer_"),
        Rule("flux", "contains", "double_blocks."),
        Rule("flux", "contains", "single_transformer_blocks."),
        Rule("sdxl", "prefix", "lora_te2_"),
        Rule("sdxl", "prefix", "lora_te1_"),
        Rule("sdxl", "prefix", "text_encoder_2."),
        *_shape_rules("attn2_to_k.lora_down.weight", 1, CONTEXT_WIDTHS),
        *_shape_rules("attn2.to_k.lora.down.weight", 1, CONTEXT_WIDTHS),
        *_shape_rules("attn2.to_k.lora_A.weight", 1, CONTEXT_WIDTHS),
        # accelerate's full training state
        *_shape_rules("attn2.to_k.lora_A.default.weight", 1, CONTEXT_WIDTHS),
        *_shape_rules("attn2.processor.to_k_lora.down.weight", 1, CONTEXT_WIDTHS),
        *_META_RULES,
    ),
    "embedding": (
        Rule("sdxl", "key", "clip_g"),
        *_shape_rules("emb_params", 1, {768: "sd15", 1024: "sd2"}),
        *_shape_rules("string_to_param", 1, {768: "sd15", 1024: "sd2"}),
        *_META_RULES,
    ),
    # SD1.x and SDXL VAEs have identical shapes: only metadata can tell them apart.
    "vae": _META_RULES,
    # SDXL ControlNets take the pooled text and size embedding (label_emb / add_embedding); the context
    # width tells the rest, in both layouts (ldm ``attn2.to_k``, diffusers ``attn2.to_k`` too)
    "controlnet": (
        Rule("sdxl", "prefix", "control_model.label_emb."),
        Rule("sdxl", "prefix", "label_emb."),
        Rule("sdxl", "prefix", "add_embedding."),
        *_shape_rules("attn2.to_k.weight", 1, CONTEXT_WIDTHS),
        *_META_RULES,
    ),
    # YOLO detectors are pickles: never read here
    "adetailer": (),
    # an upscaler's family is not an architecture: it goes to the entry's details (inspection)
    "upscaler": (),
}


@dataclass(frozen=True)
class Detection:
    kind: ModelType | None
    architecture: Architecture | None
    reason: str


def _matches(rule: Rule, tensors: dict[str, TensorInfo], metadata: dict[str, str]) -> bool:
    if rule.match == "meta":
        return metadata.get(rule.meta_key, "").lower().startswith(rule.text)
    if rule.match == "key":
        return rule.text in tensors
    if rule.match == "prefix":
        return any(name.startswith(rule.text) for name in tensors)
    if rule.match == "contains":
        return any(rule.text in name for name in tensors)
    return any(
        rule.text in name and len(info.shape) > rule.dim and info.shape[rule.dim] == rule.value
        for name, info in tensors.items()
    )


def detect(tensors: dict[str, TensorInfo], metadata: dict[str, str]) -> Detection:
    """Kind and architecture of a safetensors file from its header alone (pure, no I/O)."""
    kind: ModelType | None = None
    for candidate, rule in KIND_RULES:
        if _matches(rule, tensors, metadata):
            kind = candidate
            break
    if kind is None:
        return Detection(None, None, "no known tensor layout")
    for rule in ARCH_RULES[kind]:
        if _matches(rule, tensors, metadata):
            how = f"metadata {rule.meta_key}" if rule.match == "meta" else f"{rule.match} {rule.text!r}"
            if rule.match == "shape":
                how += f" dim{rule.dim}={rule.value}"
            return Detection(kind, rule.result, how)  # type: ignore[arg-type]
    return Detection(kind, "unknown", "no architecture rule matched")


#: the first UNet convolution of an A1111 single-file checkpoint: its input channels tell the UNet's job
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def unet_in_channels(tensors: Mapping[str, TensorInfo]) -> int | None:
    """4 for a plain UNet, 9 for an inpainting one (latent + mask + masked image), 8 for instruct-pix2pix."""
    conv_in = tensors.get(UNET_CONV_IN)
    return conv_in.shape[1] if conv_in is not None and len(conv_in.shape) == 4 else None


_UNSUPPORTED = {"sd2": "an SD2.x", "sdxl_refiner": "an SDXL refiner", "flux": "a FLUX", "sd3": "an SD3"}


class UnsupportedCheckpoint(ValueError):
    """A single-file checkpoint no SD1.x/SDXL pipeline loads (SD2, the SDXL refiner, FLUX, SD3, unknown)."""


def checkpoint_pipeline(
    tensors: dict[str, TensorInfo], metadata: dict[str, str], *, name: str
) -> PipelineKind:
    """Which diffusers pipeline an A1111 single-file checkpoint needs: ``sd15`` or ``sdxl``.

    Raises:
        UnsupportedCheckpoint: naming what ``name`` is instead.
    """
    found = detect(tensors, metadata)
    if found.kind == "checkpoint" and found.architecture == "sd15":
        return "sd15"
    if found.kind == "checkpoint" and found.architecture == "sdxl":
        return "sdxl"
    if found.kind == "checkpoint" and found.architecture in _UNSUPPORTED:
        what = _UNSUPPORTED[found.architecture]
        raise UnsupportedCheckpoint(f"{name} is {what} checkpoint; only SD1.x and SDXL ones load")
    raise UnsupportedCheckpoint(f"{name} is not an SD1.x/SDXL checkpoint in A1111's single-file layout")
