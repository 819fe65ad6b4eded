"""Weights streamed into empty diffusers/transformers components, one tensor at a time: from an A1111 single
file (renamed to diffusers keys) or from a diffusers pipeline folder's component files (used as they are).

The load never holds a second copy of the weights: each tensor is read with plain file I/O, cast, moved into
its (meta-device) module and dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from worker.registry.pipeline_configs import PipelineKind
from worker.registry.safetensors_header import SafetensorsHeader, TensorInfo, read_header

from ..errors import ModelLoadError

# Where each component's weights live in A1111's single-file layout.
COMPONENT_PREFIXES: dict[PipelineKind, dict[str, str]] = {
    "sd15": {
        "text_encoder": "cond_stage_model.transformer.",
        "vae": "first_stage_model.",
        "unet": "model.diffusion_model.",
    },
    "sdxl": {
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
        "vae": "first_stage_model.",
        "unet": "model.diffusion_model.",
    },
}


def load_components(
    path: Path,
    header: SafetensorsHeader,
    kind: PipelineKind,
    configs: dict[str, dict[str, Any]],
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Build each component empty (meta device) and stream its weights in one tensor at a time.

    ``from_single_file`` reads the whole file into memory and keeps it while it builds the models, so a
    load peaks at the file plus the models. Here only one component's file tensors are read at a time and
    each is released as soon as its (cast) copy is in the model: the load peaks near the loaded size.
    """
    parts: dict[str, Any] = {}
    with path.open("rb") as handle:
        for name, prefix in COMPONENT_PREFIXES[kind].items():
            state = _read_tensors(handle, header, dtype, prefix)
            model, state = _empty_component(name, configs[name], state, prefix)
            _stream_into(model, state, dtype)
            _check_complete(model, path.name, name)
            parts[name] = model.eval()
            del state
            _release_freed_memory()
    return parts


def load_folder_components(
    weights: dict[str, list[Path]], configs: dict[str, dict[str, Any]], dtype: torch.dtype
) -> dict[str, Any]:
    """A pipeline folder's components, streamed like a single file's (diffusers' ``from_pretrained`` reads a
    component's whole file before casting it: an SDXL folder peaked 2.5 GB above the single file)."""
    parts: dict[str, Any] = {}
    for name, files in weights.items():
        label = f"{files[0].parent.parent.name}/{name}"
        with init_empty_weights():
            model = _component_from_config(name, configs[name])
        for file in files:
            with file.open("rb") as handle:
                state = _read_tensors(handle, read_header(file), dtype)
            _stream_into(model, state, dtype)
            del state
            _release_freed_memory()
        _check_complete(model, label, name)
        parts[name] = model.eval()
    return parts


def _component_from_config(name: str, config: dict[str, Any]) -> Any:
    """The component's module (diffusers' are untyped), on the device the caller's context sets."""
    if name == "unet":
        return UNet2DConditionModel.from_config(config)
    if name == "vae":
        return AutoencoderKL.from_config(config)
    if name == "text_encoder":
        return CLIPTextModel(CLIPTextConfig(**config))
    return CLIPTextModelWithProjection(CLIPTextConfig(**config))


def _empty_component(
    name: str, config: dict[str, Any], state: dict[str, torch.Tensor], prefix: str
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The component built on the meta device, and its LDM tensors renamed to its diffusers keys."""
    with init_empty_weights():
        model = _component_from_config(name, config)
    if name == "unet":
        return model, convert_ldm_unet_checkpoint(state, dict(model.config))
    if name == "vae":
        return model, convert_ldm_vae_checkpoint(state, dict(model.config))
    if name == "text_encoder":
        return model, convert_ldm_clip_checkpoint(state)
    return model, convert_open_clip_checkpoint(model, state, prefix=prefix)


def _release_freed_memory() -> None:
    """Hand the file tensors' freed heap memory back to the OS (glibc keeps it otherwise, and the process
    would carry the size of the file on top of the model for its whole life)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_tensors(
    handle: io.BufferedReader, header: SafetensorsHeader, dtype: torch.dtype, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The file's tensors whose keys start with ``prefix``, each read and cast on its own."""
    return {
        key: _read_tensor(handle, header.data_offset, entry, dtype)
        for key, entry in header.tensors.items()
        if key.startswith(prefix)
    }


def _read_tensor(
    handle: io.BufferedReader, data_start: int, entry: TensorInfo, dtype: torch.dtype
) -> torch.Tensor:
    """One tensor read with plain file I/O (no memory map, whose pages would stay resident for the whole
    file) and converted at once to the model's dtype, so only the converted copy stays in memory."""
    raw = torch.empty(entry.end - entry.start, dtype=torch.uint8)
    handle.seek(data_start + entry.start)
    handle.readinto(raw.numpy().data)
    tensor = raw.view(_SAFETENSORS_DTYPES[entry.dtype]).reshape(entry.shape)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _stream_into(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Move the converted tensors into the empty model one by one, dropping each source tensor at once."""
    expected = dict(model.named_parameters()) | dict(model.named_buffers())
    for key in list(state):
        tensor = state.pop(key)
        # transformers 5 names CLIPTextModel's parameters without the "text_model." prefix diffusers writes
        name = key if key in expected else key.removeprefix("text_model.")
        if name not in expected:
            continue  # e.g. CLIP's position_ids in old files
        value = tensor.to(dtype) if tensor.is_floating_point() else tensor
        set_module_tensor_to_device(model, name, "cpu", value=value)
        del tensor, value


def _check_complete(model: torch.nn.Module, file: str, component: str) -> None:
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        names = ", ".join(missing[:5])
        raise ModelLoadError(f"{file}: the {component} weights are incomplete (missing {names})")
