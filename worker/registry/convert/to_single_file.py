"""A diffusers SD1.x/SDXL pipeline folder -> one A1111 single-file checkpoint (its configs in the metadata).

UNet and VAE names go through block tables generated from the folder's own configs; CLIP-L goes under
``cond_stage_model.transformer.`` (SDXL: ``conditioner.embedders.0.transformer.``); SDXL's second encoder
goes back to OpenCLIP (q/k/v joined into ``in_proj``, ``text_projection`` transposed); VAE attention
matrices become 1x1 convolutions.
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.registry.conversions import CONVERTER_VERSION, ConversionFailed, Summary
from worker.registry.convert.tensor_plan import Plan, TensorSource, open_files, tensor_names, write_plan
from worker.registry.hashing import ByteProgress
from worker.registry.keymaps import (
    LDM_PREFIX,
    BlockMap,
    clip_to_hf,
    hf_to_open_clip,
    is_vae_attention_matrix,
    unet_blocks,
    vae_blocks,
)
from worker.registry.layouts import DiffusersFolder
from worker.registry.pipeline_configs import CONFIG_METADATA_KEY, MODELSPEC_ARCHITECTURE
from worker.registry.tensors import TensorFile

#: (layer, q/k/v) -> the three projections' (file, name) OpenCLIP fuses into one ``in_proj``
_Projections = dict[tuple[str, str], dict[str, tuple[TensorFile, str]]]


def checkpoint_from_diffusers(
    folder: DiffusersFolder, out: Path, *, half: bool = False, progress: ByteProgress | None = None
) -> Summary:
    """Write ``folder`` as one A1111 checkpoint at ``out`` (its component configs go into the metadata)."""
    try:
        kind = folder.pipeline_kind
    except ValueError as exc:
        raise ConversionFailed(str(exc)) from None
    dropped: list[str] = []
    plan = _unet_plan(folder) | _vae_plan(folder)
    if "text_encoder" in folder.weights:
        plan |= _clip_plan(folder, LDM_PREFIX[f"{kind}.text_encoder"], dropped)
    if "text_encoder_2" in folder.weights:
        plan |= _open_clip_plan(folder, LDM_PREFIX[f"{kind}.text_encoder_2"], dropped)
    metadata = {
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[kind],
        CONFIG_METADATA_KEY: json.dumps(folder.configs, sort_keys=True),
        "worker.converter": CONVERTER_VERSION,
        "worker.converted_from": folder.path.name,
    }
    size = write_plan(out, plan, metadata, half, progress)
    return Summary(
        tensors=len(plan),
        bytes_written=size,
        dropped=dropped,
        facts={"architecture": kind, "precision": "fp16" if half else folder.precision},
    )


def _unet_plan(folder: DiffusersFolder) -> Plan:
    plan: Plan = {}
    unet = BlockMap(unet_blocks(folder.configs["unet"]))
    for file, name in tensor_names(open_files(folder.weights["unet"])):
        ldm = unet.to_ldm(name)
        if ldm is None:
            raise ConversionFailed(f"unet tensor {name!r} has no A1111 counterpart (not an SD UNet?)")
        plan[LDM_PREFIX["unet"] + ldm] = TensorSource(file, (name,), file.shape(name))
    return plan


def _vae_plan(folder: DiffusersFolder) -> Plan:
    if "vae" not in folder.weights:
        raise ConversionFailed(f"{folder.path.name} has no vae/: an A1111 checkpoint needs its VAE")
    plan: Plan = {}
    vae = BlockMap(vae_blocks(folder.configs["vae"]))
    for file, name in tensor_names(open_files(folder.weights["vae"])):
        ldm = vae.to_ldm(name)
        if ldm is None:
            raise ConversionFailed(f"vae tensor {name!r} has no A1111 counterpart")
        shape = file.shape(name)
        if is_vae_attention_matrix(ldm, shape) and len(shape) == 2:
            shape = (*shape, 1, 1)
        plan[LDM_PREFIX["vae"] + ldm] = TensorSource(file, (name,), shape)
    return plan


def _clip_plan(folder: DiffusersFolder, prefix: str, dropped: list[str]) -> Plan:
    plan: Plan = {}
    for file, name in tensor_names(open_files(folder.weights["text_encoder"])):
        if name.endswith("position_ids"):
            dropped.append(f"text_encoder.{name}")
            continue
        plan[prefix + clip_to_hf(name)] = TensorSource(file, (name,), file.shape(name))
    return plan


def _open_clip_plan(folder: DiffusersFolder, prefix: str, dropped: list[str]) -> Plan:
    plan: Plan = {}
    projections: _Projections = {}
    for file, name in tensor_names(open_files(folder.weights["text_encoder_2"])):
        target = hf_to_open_clip(name)
        if target is None:
            if not name.endswith("position_ids"):
                raise ConversionFailed(f"text_encoder_2 tensor {name!r} has no OpenCLIP counterpart")
            dropped.append(f"text_encoder_2.{name}")
        elif isinstance(target, tuple):
            layer, which, part = target
            projections.setdefault((layer, part), {})[which] = (file, name)
        else:
            shape = file.shape(name)
            transpose = target == "text_projection"
            plan[prefix + target] = TensorSource(
                file, (name,), shape[::-1] if transpose else shape, transpose
            )
    for (layer, part), parts in projections.items():
        plan[f"{prefix}{layer}attn.in_proj_{part}"] = _joined(layer, part, parts)
    return plan


def _joined(layer: str, part: str, parts: dict[str, tuple[TensorFile, str]]) -> TensorSource:
    """q, k and v stacked into OpenCLIP's one ``in_proj`` tensor (all three must sit in one shard)."""
    if set(parts) != {"q", "k", "v"}:
        raise ConversionFailed(f"text_encoder_2 layer {layer} lacks one of q/k/v ({part})")
    file = parts["q"][0]
    if any(parts[w][0] is not file for w in "qkv"):
        raise ConversionFailed(f"text_encoder_2 layer {layer}: q/k/v are in different shards")
    names = tuple(parts[w][1] for w in "qkv")
    rows = sum(file.shape(n)[0] for n in names)
    return TensorSource(file, names, (rows, *file.shape(names[0])[1:]))
