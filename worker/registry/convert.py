"""Converters between training outputs and what A1111 reads, with safetensors + numpy only (no torch).

* ``checkpoint_from_diffusers``: a diffusers SD1.x/SDXL pipeline folder -> an A1111 single-file checkpoint.
* ``diffusers_from_checkpoint``: an A1111 single file -> a diffusers pipeline folder (weights and configs;
  no tokenizer files: the embedded engine brings its own, as for single files).
* ``kohya_from_lora``: a diffusers/PEFT LoRA (files, or an accelerate ``checkpoint-N`` state) -> a kohya LoRA
  that both A1111 and diffusers apply, with each module's ``alpha`` carrying PEFT's scaling.

Tensors are streamed one at a time (``worker.registry.tensors``): peak memory is about one tensor, and
values are copied bit for bit unless ``half`` casts floats to fp16. Every function writes only to the
path it is given; atomic placement, locks and lineage are the registry's job (``worker.registry.registry``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.model_types import Architecture
from worker.registry.conversions import CONVERTER_VERSION, ConversionFailed, Summary
from worker.registry.keymaps import (
    LDM_PREFIX,
    BlockMap,
    Component,
    LoraKey,
    clip_to_hf,
    guess_component,
    hf_to_open_clip,
    is_vae_attention_matrix,
    kohya_name,
    open_clip_to_hf,
    parse_lora_key,
    peft_pattern_value,
    unet_blocks,
    vae_blocks,
)
from worker.registry.layouts import DiffusersFolder
from worker.registry.pipeline_configs import (
    CONFIG_METADATA_KEY,
    DIFFUSERS_FORMAT_VERSION,
    REAL_CONFIGS,
    SCHEDULER,
    PipelineKind,
    model_index,
)
from worker.registry.safetensors_header import HeaderError
from worker.registry.tensors import Progress, Tensor, TensorFile, concat, scalar, write_safetensors

log = logging.getLogger(__name__)

_MODELSPEC = {"sd15": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}
_KOHYA_BASE_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
_CONTEXT_ARCH: dict[int, Architecture] = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


def _open(path: Path) -> TensorFile:
    try:
        return TensorFile(path)
    except HeaderError as exc:
        raise ConversionFailed(f"{path.name}: {exc}", details={"file": str(path.name)}) from None
    except OSError as exc:
        raise ConversionFailed(f"{path.name}: unreadable ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class _Source:
    """Where one output tensor comes from: a source tensor and how to reshape it, or parts to join."""

    file: TensorFile
    names: tuple[str, ...]
    shape: tuple[int, ...]
    transpose: bool = False

    def load(self) -> Tensor:
        parts = [self.file.get(n) for n in self.names]
        tensor = parts[0] if len(parts) == 1 else concat(parts)
        if self.transpose:
            tensor = tensor.transpose()
        return tensor.reshape(*self.shape) if tensor.shape != self.shape else tensor


def _write(
    out: Path,
    plan: dict[str, _Source],
    metadata: dict[str, str],
    half: bool,
    progress: Progress | None,
    extra: dict[str, Tensor] | None = None,
) -> int:
    """Stream ``plan`` (plus small ``extra`` tensors) into ``out``; ``half`` casts floats to fp16."""

    def dtype_of(src: _Source) -> str:
        dtype = src.file.dtype(src.names[0])
        return "F16" if half and dtype in ("F32", "BF16", "F64") else dtype

    layout = {name: (dtype_of(src), src.shape) for name, src in plan.items()}
    layout |= {name: (t.dtype, t.shape) for name, t in (extra or {}).items()}

    def produce() -> Iterable[tuple[str, Tensor]]:
        for name, src in plan.items():
            yield name, src.load().cast(layout[name][0])
        yield from (extra or {}).items()

    try:
        return write_safetensors(out, produce, metadata, layout=layout, progress=progress)
    except HeaderError as exc:
        raise ConversionFailed(f"reading the source failed: {exc}") from None


def _files(paths: list[Path]) -> list[TensorFile]:
    return [_open(p) for p in paths]


def _names(files: list[TensorFile]) -> Iterable[tuple[TensorFile, str]]:
    for file in files:
        for name in file.names:
            yield file, name


# ---- diffusers folder -> A1111 single file ------------------------------------------------------------


def _plan_diffusers_to_ldm(
    folder: DiffusersFolder, kind: PipelineKind
) -> tuple[dict[str, _Source], list[str]]:
    plan: dict[str, _Source] = {}
    dropped: list[str] = []
    unet = BlockMap(unet_blocks(folder.configs["unet"]))
    for file, name in _names(_files(folder.weights["unet"])):
        ldm = unet.to_ldm(name)
        if ldm is None:
            raise ConversionFailed(f"unet tensor {name!r} has no A1111 counterpart (not an SD UNet?)")
        plan[LDM_PREFIX["unet"] + ldm] = _Source(file, (name,), file.shape(name))
    if "vae" not in folder.weights:
        raise ConversionFailed(f"{folder.path.name} has no vae/: an A1111 checkpoint needs its VAE")
    vae = BlockMap(vae_blocks(folder.configs["vae"]))
    for file, name in _names(_files(folder.weights["vae"])):
        ldm = vae.to_ldm(name)
        if ldm is None:
            raise ConversionFailed(f"vae tensor {name!r} has no A1111 counterpart")
        shape = file.shape(name)
        if is_vae_attention_matrix(ldm, shape) and len(shape) == 2:
            shape = (*shape, 1, 1)
        plan[LDM_PREFIX["vae"] + ldm] = _Source(file, (name,), shape)
    for component in ("text_encoder", "text_encoder_2"):
        if component not in folder.weights:
            continue
        files = _files(folder.weights[component])
        prefix = LDM_PREFIX[f"{kind}.{component}"]
        if component == "text_encoder":
            for file, name in _names(files):
                if name.endswith("position_ids"):
                    dropped.append(f"{component}.{name}")
                    continue
                plan[prefix + clip_to_hf(name)] = _Source(file, (name,), file.shape(name))
            continue
        qkv: dict[tuple[str, str], dict[str, tuple[TensorFile, str]]] = {}
        for file, name in _names(files):
            target = hf_to_open_clip(name)
            if target is None:
                if name.endswith("position_ids"):
                    dropped.append(f"{component}.{name}")
                    continue
                raise ConversionFailed(f"{component} tensor {name!r} has no OpenCLIP counterpart")
            if isinstance(target, tuple):
                layer, which, kind_ = target
                qkv.setdefault((layer, kind_), {})[which] = (file, name)
                continue
            shape = file.shape(name)
            transpose = target == "text_projection"
            plan[prefix + target] = _Source(file, (name,), shape[::-1] if transpose else shape, transpose)
        for (layer, kind_), parts in qkv.items():
            if set(parts) != {"q", "k", "v"}:
                raise ConversionFailed(f"{component} layer {layer} lacks one of q/k/v ({kind_})")
            file = parts["q"][0]
            names = tuple(parts[w][1] for w in ("q", "k", "v"))
            rows = sum(parts[w][0].shape(parts[w][1])[0] for w in ("q", "k", "v"))
            shape = (rows, *file.shape(names[0])[1:])
            if any(parts[w][0] is not file for w in "qkv"):
                raise ConversionFailed(f"{component} layer {layer}: q/k/v are in different shards")
            plan[f"{prefix}{layer}attn.in_proj_{kind_}"] = _Source(file, names, shape)
    return plan, dropped


def checkpoint_from_diffusers(
    folder: DiffusersFolder, out: Path, *, half: bool = False, progress: Progress | None = None
) -> Summary:
    """Write ``folder`` as one A1111 checkpoint at ``out`` (its component configs go into the metadata)."""
    try:
        kind = folder.pipeline_kind
    except ValueError as exc:
        raise ConversionFailed(str(exc)) from None
    plan, dropped = _plan_diffusers_to_ldm(folder, kind)
    metadata = {
        "modelspec.architecture": _MODELSPEC[kind],
        CONFIG_METADATA_KEY: json.dumps(folder.configs, sort_keys=True),
        "worker.converter": CONVERTER_VERSION,
        "worker.converted_from": folder.path.name,
    }
    size = _write(out, plan, metadata, half, progress)
    return Summary(
        tensors=len(plan),
        bytes_written=size,
        dropped=dropped,
        facts={"architecture": kind, "precision": "fp16" if half else folder.precision},
    )


# ---- A1111 single file -> diffusers folder ----------------------------------------------------------


def _single_file_kind(file: TensorFile) -> PipelineKind:
    names = file.names
    if any(n.startswith("conditioner.embedders.1.model.") for n in names):
        return "sdxl"
    if any(n.startswith("cond_stage_model.transformer.") for n in names):
        return "sd15"
    if any(n.startswith("cond_stage_model.model.") for n in names):
        raise ConversionFailed(f"{file.path.name} is an SD2.x checkpoint; only SD1.x and SDXL convert")
    raise ConversionFailed(
        f"{file.path.name} is not an SD1.x/SDXL checkpoint in A1111's layout (unknown base model)"
    )


def _check_configs(
    file: TensorFile, kind: PipelineKind, configs: dict[str, dict[str, Any]], source: str
) -> None:
    """The configs must describe this file's shapes; a mismatch means another (unknown) architecture."""
    unet, vae = configs["unet"], configs["vae"]
    checks = [
        ("model.diffusion_model.input_blocks.0.0.weight", 0, unet["block_out_channels"][0], "UNet channels"),
        ("first_stage_model.encoder.conv_in.weight", 0, vae["block_out_channels"][0], "VAE channels"),
    ]
    width_key = next((n for n in file.names if n.endswith("attn2.to_k.weight")), None)
    if width_key:
        checks.append((width_key, 1, unet["cross_attention_dim"], "cross-attention width"))
    last_input = max(
        (int(n.split(".")[3]) for n in file.names if n.startswith("model.diffusion_model.input_blocks.")),
        default=-1,
    )
    expected_last = len(unet["down_block_types"]) * (int(unet["layers_per_block"]) + 1) - 1
    problems = [
        f"{what} {file.shape(key)[dim]} (the {source} config says {value})"
        for key, dim, value, what in checks
        if key in file.header.tensors and file.shape(key)[dim] != value
    ]
    if last_input != expected_last:
        problems.append(f"{last_input + 1} UNet input blocks (the {source} config says {expected_last + 1})")
    if problems:
        raise ConversionFailed(
            f"{file.path.name} does not match the {source} architecture: {'; '.join(problems)}. "
            "Unknown base model: only standard SD1.5/SDXL files, or files carrying their configs "
            f"({CONFIG_METADATA_KEY} metadata), convert to a diffusers folder"
        )


def _plan_ldm_to_diffusers(
    file: TensorFile, kind: PipelineKind, configs: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, _Source]], list[str]]:
    plans: dict[str, dict[str, _Source]] = {c: {} for c in configs if c in ("unet", "vae") or "text" in c}
    dropped: list[str] = []
    unet = BlockMap(unet_blocks(configs["unet"]))
    vae = BlockMap(vae_blocks(configs["vae"]))
    te = LDM_PREFIX[f"{kind}.text_encoder"]
    te2 = LDM_PREFIX.get(f"{kind}.text_encoder_2", "\0")
    qkv: dict[str, str] = {}
    for name in file.names:
        shape = file.shape(name)
        if name.startswith(LDM_PREFIX["unet"]):
            target = unet.to_diffusers(name[len(LDM_PREFIX["unet"]) :])
            if target is None:
                raise ConversionFailed(f"UNet tensor {name!r} has no diffusers counterpart")
            plans["unet"][target] = _Source(file, (name,), shape)
        elif name.startswith(LDM_PREFIX["vae"]):
            rest = name[len(LDM_PREFIX["vae"]) :]
            target = vae.to_diffusers(rest)
            if target is None:
                raise ConversionFailed(f"VAE tensor {name!r} has no diffusers counterpart")
            if is_vae_attention_matrix(rest, shape) and len(shape) == 4:
                shape = shape[:2]
            plans["vae"][target] = _Source(file, (name,), shape)
        elif name.startswith(te):
            if name.endswith("position_ids"):
                dropped.append(name)
                continue
            plans["text_encoder"][clip_to_hf(name[len(te) :])] = _Source(file, (name,), shape)
        elif name.startswith(te2):
            rest = name[len(te2) :]
            mapped = open_clip_to_hf(rest)
            if mapped is None:
                if rest.split(".")[0] in ("logit_scale",) or rest.endswith("attn_mask"):
                    dropped.append(name)
                    continue
                raise ConversionFailed(f"OpenCLIP tensor {name!r} has no diffusers counterpart")
            if isinstance(mapped, tuple):
                qkv[name] = mapped[0] + "self_attn.{}_proj." + mapped[2]
                continue
            transpose = rest == "text_projection"
            plans["text_encoder_2"][mapped] = _Source(
                file, (name,), shape[::-1] if transpose else shape, transpose
            )
        else:
            # noise schedule buffers, EMA copies, ...: not part of the pipeline's weights
            dropped.append(name)
    for name, template in qkv.items():
        rows = file.shape(name)[0] // 3
        rest_shape = file.shape(name)[1:]
        for index, which in enumerate("qkv"):
            plans["text_encoder_2"][template.format(which)] = _SplitSource(
                file, (name,), (rows, *rest_shape), index=index
            )
    missing = [c for c, plan in plans.items() if not plan]
    if missing:
        raise ConversionFailed(f"{file.path.name} has no weights for {', '.join(missing)}")
    return plans, dropped


@dataclass(frozen=True)
class _SplitSource(_Source):
    """One third of OpenCLIP's fused q/k/v projection."""

    index: int = 0

    def load(self) -> Tensor:
        return self.file.get(self.names[0]).split(3)[self.index]


def diffusers_from_checkpoint(
    path: Path, out_dir: Path, *, half: bool = False, progress: Progress | None = None
) -> Summary:
    """Write the A1111 single file ``path`` as a diffusers pipeline folder ``out_dir`` (created here)."""
    file = _open(path)
    kind = _single_file_kind(file)
    source = "recorded"
    if CONFIG_METADATA_KEY in file.metadata:
        try:
            configs = json.loads(file.metadata[CONFIG_METADATA_KEY])
        except json.JSONDecodeError:
            raise ConversionFailed(f"{path.name}: its {CONFIG_METADATA_KEY} metadata is not JSON") from None
    else:
        configs, source = REAL_CONFIGS[kind], "SD1.5" if kind == "sd15" else "SDXL-base"
    _check_configs(file, kind, configs, source)
    plans, dropped = _plan_ldm_to_diffusers(file, kind, configs)
    out_dir.mkdir(parents=True)
    written = 0
    weight_file = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
    for component, plan in plans.items():
        sub = out_dir / component
        sub.mkdir()
        config = {**configs[component], "_diffusers_version": DIFFUSERS_FORMAT_VERSION}
        if half and "text" in component:
            config["torch_dtype"] = "float16"
        (sub / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True), encoding="utf-8")
        written += _write(
            sub / f"{weight_file.get(component, 'model')}.safetensors", plan, {"format": "pt"}, half, progress
        )
    (out_dir / "scheduler").mkdir()
    (out_dir / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(SCHEDULER, indent=1), encoding="utf-8"
    )
    index = model_index(kind)
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
    return Summary(
        tensors=sum(len(p) for p in plans.values()),
        bytes_written=written,
        dropped=dropped,
        notes=["no tokenizer files written: the embedded engine supplies CLIP's tokenizer"],
        facts={"architecture": kind, "configs": source},
    )


# ---- diffusers / PEFT LoRA -> kohya LoRA ----------------------------------------------------------------


@dataclass
class _Module:
    component: Component
    module: str
    down: tuple[TensorFile, str] | None = None
    up: tuple[TensorFile, str] | None = None
    alpha: tuple[TensorFile, str] | None = None


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


def kohya_from_lora(
    files: list[Path],
    out: Path,
    *,
    unet_config: dict[str, Any] | None = None,
    text_widths: dict[Component, int] | None = None,
    adapter_config: dict[str, Any] | None = None,
    alpha: float | None = None,
    half: bool = False,
    progress: Progress | None = None,
) -> Summary:
    """Write the LoRA held by ``files`` (diffusers, PEFT, or an accelerate state with base weights) as kohya.

    ``unet_config`` is the base model's UNet config (its LDM block numbering names the kohya keys);
    without it the standard SD1.5/SDXL config of the architecture the LoRA's shapes point to is used.
    ``text_widths`` (component -> hidden size) tells the text encoders of a bare PEFT state apart.
    ``alpha`` overrides every recorded ``lora_alpha`` (an accelerate state does not record it).
    """
    opened = _files(files)
    settings: dict[str, Any] = dict(adapter_config or {})
    raw: list[tuple[TensorFile, str, LoraKey]] = []
    context_widths: set[int] = set()
    for file in opened:
        settings = _alpha_settings(file.metadata) or settings
    if alpha is not None:
        settings = {"lora_alpha": alpha}
    for file in opened:
        for name in file.names:
            key = parse_lora_key(name)
            if key is not None:
                raw.append((file, name, key))
            elif (
                name.endswith(("attn2.to_k.weight", "attn2.to_k.base_layer.weight"))
                and len(file.shape(name)) == 2
            ):
                context_widths.add(file.shape(name)[1])  # the base weights of a full training state
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
        unet_config = REAL_CONFIGS["sdxl" if architecture == "sdxl" else "sd15"]["unet"]
    unet_map = BlockMap(unet_blocks(unet_config))
    plan: dict[str, _Source] = {}
    alphas: dict[str, Tensor] = {}
    ranks: set[int] = set()
    defaulted_alpha = False
    for mod in sorted(modules.values(), key=lambda m: (m.component, m.module)):
        name, rank = _plan_module(mod, plan, unet_config, unet_map, sdxl=architecture == "sdxl")
        ranks.add(rank)
        if mod.alpha is not None and alpha is None:
            value = float(mod.alpha[0].get(mod.alpha[1]).float32().reshape(-1)[0])
        else:
            configured = _setting(settings, mod.component, "lora_alpha", None)
            patterns = _setting(settings, mod.component, "alpha_pattern", {}) or {}
            picked = peft_pattern_value(patterns, mod.module, configured)
            if picked is None:
                picked, defaulted_alpha = rank, True
            value = float(picked)
            if _setting(settings, mod.component, "use_rslora", False):
                value *= math.sqrt(rank)  # PEFT scales by alpha/sqrt(r), kohya by alpha/r
        alphas[f"{name}.alpha"] = scalar(value)
    alpha_text = _alpha_text(float(t.data) for t in alphas.values())
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": alpha_text,
        "ss_base_model_version": _KOHYA_BASE_VERSION[architecture],
        "modelspec.architecture": _MODELSPEC[architecture] + "/lora",
        "worker.converter": CONVERTER_VERSION,
        "worker.converted_from": ", ".join(p.name for p in files),
    }
    size = _write(out, plan, metadata, half, progress, extra=alphas)
    notes = (
        ["no lora_alpha recorded: alpha = rank (scale 1.0), as diffusers assumes"] if defaulted_alpha else []
    )
    return Summary(
        tensors=len(plan) + len(alphas),
        bytes_written=size,
        notes=notes,
        facts={
            "architecture": architecture,
            "rank": max(ranks),
            "modules": len(alphas),
            "alpha": alpha_text,
            "components": sorted({m.component for m in modules.values()}),
        },
    )


def _alpha_settings(metadata: dict[str, str]) -> dict[str, Any]:
    """PEFT's settings as diffusers' ``save_lora_weights`` stores them (``lora_adapter_metadata``)."""
    try:
        packed = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except json.JSONDecodeError:
        return {}
    return packed if isinstance(packed, dict) else {}


def _setting(settings: dict[str, Any], component: str, key: str, default: Any) -> Any:
    """A PEFT setting, packed per component (``unet.lora_alpha``) or plain (``lora_alpha``)."""
    return settings.get(f"{component}.{key}", settings.get(key, default))


def _group(
    raw: list[tuple[TensorFile, str, LoraKey]], text_widths: dict[Component, int]
) -> dict[tuple[Component, str], _Module]:
    """LoRA tensors grouped by module; a bare PEFT text module's encoder is told by its input width."""
    bare_text: dict[str, Component] = {}
    for file, name, key in raw:
        if key.component is None and key.part == "down" and guess_component(key.module) == "text":
            width = file.shape(name)[-1]
            bare_text[key.module] = next(
                (c for c, hidden in text_widths.items() if hidden == width),
                "text_encoder_2" if width == 1280 else "text_encoder",
            )
    modules: dict[tuple[Component, str], _Module] = {}
    for file, name, key in raw:
        if key.part == "magnitude":
            raise ConversionFailed(
                f"{file.path.name} is a DoRA LoRA ({name}); DoRA does not convert to kohya"
            )
        component = key.component
        if component is None:
            family = guess_component(key.module)
            component = "unet" if family == "unet" else bare_text.get(key.module)
        if component is None:
            raise ConversionFailed(
                f"{file.path.name}: cannot tell which model LoRA tensor {name!r} belongs to"
            )
        mod = modules.setdefault((component, key.module), _Module(component, key.module))
        setattr(mod, key.part, (file, name))
    return modules


def _plan_module(
    mod: _Module, plan: dict[str, _Source], unet_config: dict[str, Any], unet_map: BlockMap, *, sdxl: bool
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
    if mod.component == "unet":
        expected = _channels(mod.module, unet_config)
        if expected is not None and down_shape[1] != expected:
            raise ConversionFailed(
                f"LoRA module {label} has {down_shape[1]} input features but the base UNet has {expected} "
                "there: the LoRA was trained for another base model (name the right one with --base)"
            )
    try:
        name = kohya_name(mod.component, mod.module, sdxl=sdxl, unet_map=unet_map)
    except ValueError as exc:
        raise ConversionFailed(f"LoRA module {label}: {exc}") from None
    plan[f"{name}.lora_down.weight"] = _Source(mod.down[0], (mod.down[1],), down_shape)
    plan[f"{name}.lora_up.weight"] = _Source(mod.up[0], (mod.up[1],), up_shape)
    return name, rank


def _lora_architecture(
    modules: dict[tuple[Component, str], _Module], widths: set[int], unet_config: dict[str, Any] | None
) -> Architecture:
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
    archs = {_CONTEXT_ARCH.get(w, "unknown") for w in widths}
    if len(archs) == 1 and archs <= {"sd15", "sdxl"}:
        return archs.pop()
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
