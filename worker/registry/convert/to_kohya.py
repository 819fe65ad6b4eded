"""A diffusers/PEFT LoRA (files, or an accelerate ``checkpoint-N`` state) -> a kohya LoRA.

``lora_A``/``lora.down`` become ``lora_down``, ``lora_B``/``lora.up`` become ``lora_up``, named as kohya's
own scripts name them; each module's ``alpha`` carries PEFT's scale: ``lora_alpha`` from the file's
``lora_adapter_metadata`` or the folder's ``adapter_config.json`` (with ``alpha_pattern`` and
``use_rslora``), else ``.alpha`` tensors, else alpha = rank (what diffusers assumes). The shapes are checked
against the base UNet: a LoRA trained for another model is refused. DoRA does not convert.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.registry.conversions import CONVERTER_VERSION, ConversionFailed, Summary
from worker.registry.convert.tensor_plan import Plan, TensorSource, open_files, write_plan
from worker.registry.detect import CONTEXT_WIDTHS
from worker.registry.hashing import ByteProgress
from worker.registry.keymaps import (
    BlockMap,
    Component,
    LoraKey,
    guess_component,
    kohya_name,
    parse_lora_key,
    peft_pattern_value,
    unet_blocks,
)
from worker.registry.pipeline_configs import MODELSPEC_ARCHITECTURE, REAL_CONFIGS, PipelineKind
from worker.registry.tensors import Tensor, TensorFile, scalar

_KOHYA_BASE_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
_DEFAULTED_ALPHA = "no lora_alpha recorded: alpha = rank (scale 1.0), as diffusers assumes"


@dataclass
class _Module:
    component: Component
    module: str
    down: tuple[TensorFile, str] | None = None
    up: tuple[TensorFile, str] | None = None
    alpha: tuple[TensorFile, str] | None = None


Modules = dict[tuple[Component, str], _Module]


def kohya_from_lora(
    files: list[Path],
    out: Path,
    *,
    unet_config: dict[str, Any] | None = None,
    text_widths: dict[Component, int] | None = None,
    adapter_config: dict[str, Any] | None = None,
    alpha: float | None = None,
    half: bool = False,
    progress: ByteProgress | None = None,
) -> Summary:
    """Write the LoRA held by ``files`` (diffusers, PEFT, or an accelerate state with base weights) as kohya.

    ``unet_config`` is the base model's UNet config (its LDM block numbering names the kohya keys);
    without it the standard SD1.5/SDXL config of the architecture the LoRA's shapes point to is used.
    ``text_widths`` (component -> hidden size) tells the text encoders of a bare PEFT state apart.
    ``alpha`` overrides every recorded ``lora_alpha`` (an accelerate state does not record it).
    """
    opened = open_files(files)
    settings = {"lora_alpha": alpha} if alpha is not None else _peft_settings(opened, adapter_config)
    raw, context_widths = _lora_tensors(opened)
    if not raw:
        raise ConversionFailed(
            f"{', '.join(p.name for p in files)}: no LoRA tensors (lora_A/lora_B, lora.down/up)"
        )
    modules = _group(raw, text_widths or {})
    context_widths |= {
        m.down[0].shape(m.down[1])[-1]
        for m in modules.values()
        if m.component == "unet" and m.module.endswith("attn2.to_k") and m.down is not None
    }
    architecture = _lora_architecture(modules, context_widths, unet_config)
    if unet_config is None:
        unet_config = REAL_CONFIGS[architecture]["unet"]
    unet_map = BlockMap(unet_blocks(unet_config))
    plan: Plan = {}
    alphas: dict[str, Tensor] = {}
    ranks: set[int] = set()
    defaulted = False
    for mod in sorted(modules.values(), key=lambda m: (m.component, m.module)):
        name, rank = _plan_module(mod, plan, unet_config, unet_map, sdxl=architecture == "sdxl")
        ranks.add(rank)
        value, guessed = _alpha(mod, rank, settings, explicit=alpha is not None)
        defaulted = defaulted or guessed
        alphas[f"{name}.alpha"] = scalar(value)
    alpha_text = _alpha_text(float(t.data) for t in alphas.values())
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": alpha_text,
        "ss_base_model_version": _KOHYA_BASE_VERSION[architecture],
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[architecture] + "/lora",
        "worker.converter": CONVERTER_VERSION,
        "worker.converted_from": ", ".join(p.name for p in files),
    }
    size = write_plan(out, plan, metadata, half, progress, extra=alphas)
    return Summary(
        tensors=len(plan) + len(alphas),
        bytes_written=size,
        notes=[_DEFAULTED_ALPHA] if defaulted else [],
        facts={
            "architecture": architecture,
            "rank": max(ranks),
            "modules": len(alphas),
            "alpha": alpha_text,
            "components": sorted({m.component for m in modules.values()}),
        },
    )


def _peft_settings(files: list[TensorFile], adapter_config: dict[str, Any] | None) -> dict[str, Any]:
    """PEFT's settings: what diffusers' ``save_lora_weights`` stored in a file, else adapter_config.json's."""
    settings: dict[str, Any] = dict(adapter_config or {})
    for file in files:
        try:
            packed = json.loads(file.metadata.get("lora_adapter_metadata") or "{}")
        except json.JSONDecodeError:
            continue
        if isinstance(packed, dict) and packed:
            settings = packed
    return settings


def _lora_tensors(files: list[TensorFile]) -> tuple[list[tuple[TensorFile, str, LoraKey]], set[int]]:
    """The LoRA tensors, and the cross-attention widths a full training state's base weights show."""
    raw: list[tuple[TensorFile, str, LoraKey]] = []
    context_widths: set[int] = set()
    for file in files:
        for name in file.names:
            key = parse_lora_key(name)
            if key is not None:
                raw.append((file, name, key))
            elif (
                name.endswith(("attn2.to_k.weight", "attn2.to_k.base_layer.weight"))
                and len(file.shape(name)) == 2
            ):
                context_widths.add(file.shape(name)[1])
    return raw, context_widths


def _setting(settings: dict[str, Any], component: str, key: str, default: Any) -> Any:
    """A PEFT setting, packed per component (``unet.lora_alpha``) or plain (``lora_alpha``)."""
    return settings.get(f"{component}.{key}", settings.get(key, default))


def _alpha(mod: _Module, rank: int, settings: dict[str, Any], *, explicit: bool) -> tuple[float, bool]:
    """The module's kohya alpha, and whether it had to be assumed (nothing recorded it)."""
    if mod.alpha is not None and not explicit:
        return float(mod.alpha[0].get(mod.alpha[1]).float32().reshape(-1)[0]), False
    configured = _setting(settings, mod.component, "lora_alpha", None)
    patterns = _setting(settings, mod.component, "alpha_pattern", {}) or {}
    picked = peft_pattern_value(patterns, mod.module, configured)
    value = float(rank if picked is None else picked)
    if _setting(settings, mod.component, "use_rslora", False):
        value *= math.sqrt(rank)  # PEFT scales by alpha/sqrt(r), kohya by alpha/r
    return value, picked is None


def _group(raw: list[tuple[TensorFile, str, LoraKey]], text_widths: dict[Component, int]) -> Modules:
    """LoRA tensors grouped by module; a bare PEFT text module's encoder is told by its input width."""
    bare_text: dict[str, Component] = {}
    for file, name, key in raw:
        if key.component is None and key.part == "down" and guess_component(key.module) == "text":
            width = file.shape(name)[-1]
            bare_text[key.module] = next(
                (c for c, hidden in text_widths.items() if hidden == width),
                "text_encoder_2" if width == 1280 else "text_encoder",
            )
    modules: Modules = {}
    for file, name, key in raw:
        if key.part == "magnitude":
            raise ConversionFailed(
                f"{file.path.name} is a DoRA LoRA ({name}); DoRA does not convert to kohya"
            )
        component = key.component
        if component is None:
            component = "unet" if guess_component(key.module) == "unet" else bare_text.get(key.module)
        if component is None:
            raise ConversionFailed(
                f"{file.path.name}: cannot tell which model LoRA tensor {name!r} belongs to"
            )
        mod = modules.setdefault((component, key.module), _Module(component, key.module))
        setattr(mod, key.part, (file, name))
    return modules


def _channels(module: str, unet_config: dict[str, Any]) -> int | None:
    """The feature width the base UNet has at a transformer module (None where the check does not apply)."""
    channels = list(unet_config["block_out_channels"])
    parts = module.split(".")
    if ".attentions." not in f".{module}." or not module.endswith(("attn1.to_q", "attn2.to_q", "proj_in")):
        return None
    if parts[0] == "down_blocks":
        return int(channels[int(parts[1])])
    if parts[0] == "up_blocks":
        return int(list(reversed(channels))[int(parts[1])])
    if parts[0] == "mid_block":
        return int(channels[-1])
    return None


def _plan_module(
    mod: _Module, plan: Plan, unet_config: dict[str, Any], unet_map: BlockMap, *, sdxl: bool
) -> tuple[str, int]:
    """Add one module's down/up matrices to ``plan`` under its kohya name; returns (name, rank)."""
    label = f"{mod.component}.{mod.module}"
    if mod.down is None or mod.up is None:
        raise ConversionFailed(
            f"LoRA module {label} lacks its {'down (A)' if mod.down is None else 'up (B)'} matrix"
        )
    down_shape = mod.down[0].shape(mod.down[1])
    up_shape = mod.up[0].shape(mod.up[1])
    rank = down_shape[0]
    if len(up_shape) < 2 or up_shape[1] != rank:
        raise ConversionFailed(f"LoRA module {label}: rank {rank} in A but B has shape {up_shape}")
    expected = _channels(mod.module, unet_config) if mod.component == "unet" else None
    if expected is not None and down_shape[1] != expected:
        raise ConversionFailed(
            f"LoRA module {label} has {down_shape[1]} input features but the base UNet has {expected} "
            "there: the LoRA was trained for another base model (name the right one with --base)"
        )
    try:
        name = kohya_name(mod.component, mod.module, sdxl=sdxl, unet_map=unet_map)
    except ValueError as exc:
        raise ConversionFailed(f"LoRA module {label}: {exc}") from None
    plan[f"{name}.lora_down.weight"] = TensorSource(mod.down[0], (mod.down[1],), down_shape)
    plan[f"{name}.lora_up.weight"] = TensorSource(mod.up[0], (mod.up[1],), up_shape)
    return name, rank


def _lora_architecture(
    modules: Modules, widths: set[int], unet_config: dict[str, Any] | None
) -> PipelineKind:
    """SD1.5 or SDXL: from the base UNet's config when given, else from the LoRA's own shapes."""
    if unet_config is not None:
        base_width = int(unet_config["cross_attention_dim"])
        if widths and widths != {base_width}:
            raise ConversionFailed(
                f"the LoRA's cross-attention width {sorted(widths)} is not the base model's {base_width}: "
                "it was trained for another base model"
            )
        return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd15"
    if any(c == "text_encoder_2" for c, _ in modules):
        return "sdxl"
    archs = {CONTEXT_WIDTHS.get(w, "unknown") for w in widths}
    if archs == {"sd15"} or archs == {"sdxl"}:
        return "sd15" if archs == {"sd15"} else "sdxl"
    if archs:
        raise ConversionFailed(
            f"unknown base model: cross-attention width {sorted(widths)} is not SD1.5's 768 or SDXL's 2048"
        )
    raise ConversionFailed(
        "unknown base model: the LoRA has no cross-attention layer that tells SD1.5 from SDXL; name the base "
        "checkpoint (--base)"
    )


def _alpha_text(values: Iterable[float]) -> str:
    distinct = sorted(set(values))
    return f"{distinct[0]:g}" if len(distinct) == 1 else "varies"
