"""Which conversion a model needs for an engine, where the output goes, and whether it already exists.

Pure functions over registry entries; ``ConversionRunner`` (``conversion_runner``) does the I/O (lock,
temp + rename, lineage). Outputs sit beside their source in the same kind folder, under names A1111 users
can type:

* LoRA ``loras/x.safetensors`` (diffusers/PEFT) -> ``loras/x-kohya.safetensors``; a generic stem
  (``pytorch_lora_weights``, ``adapter_model``) takes the folder's name: ``loras/run/run-kohya.safetensors``;
* training folder ``loras/run/checkpoint-500`` -> ``loras/run/run-step500-kohya.safetensors``;
* diffusers folder ``checkpoints/ft`` -> ``checkpoints/ft.safetensors``;
* single file ``checkpoints/x.safetensors`` -> ``checkpoints/x-diffusers/`` (for the embedded engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from worker.errors import ModelIncompatible
from worker.registry.layouts import Engine
from worker.registry.models import LiveEntry, LiveRegistry, entry_key
from worker.registry.volume import KIND_DIRS

#: recorded in every output's lineage; bump when a conversion's output changes for the same input
CONVERTER_VERSION = "worker.registry.convert/1"

Target = Literal["a1111", "diffusers"]
TARGETS: tuple[Target, ...] = ("a1111", "diffusers")
_GENERIC_STEMS = frozenset({"pytorch_lora_weights", "adapter_model", "model", "diffusion_pytorch_model"})
_LAYOUT_NAMES = {
    "diffusers": "diffusers",
    "peft": "PEFT",
    "kohya": "kohya",
    "lycoris": "LyCORIS",
    "ldm": "A1111",
}


class ConversionFailed(ModelIncompatible):
    """A model that cannot be converted (unknown base model, missing weights, truncated file...)."""


@dataclass
class Summary:
    """What a converter did, for the CLI, the registry's lineage and the logs."""

    tensors: int = 0
    bytes_written: int = 0
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversionResult:
    """One source's outcome: ``converted`` now, an earlier conversion ``reused``, or ``not needed``."""

    source: str
    target: Target
    status: Literal["converted", "reused", "not needed"]
    output: LiveEntry | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()


def describe_layout(entry: LiveEntry) -> str:
    if entry.format == "training":
        step = entry.details.get("step")
        state = _LAYOUT_NAMES.get(entry.layout or "", "unknown")
        return f"training folder ({state} state{f', step {step}' if step is not None else ''})"
    if entry.format == "diffusers":
        return "diffusers pipeline folder"
    return f"{_LAYOUT_NAMES.get(entry.layout or '', entry.layout or 'unknown')} layout"


def default_target(entry: LiveEntry) -> Target | None:
    """What ``convert`` does without ``--to``: whatever A1111 cannot use becomes usable; a single file
    becomes a diffusers folder (for the embedded engine's faster load); None: nothing to do."""
    if entry.usable_by is not None and "a1111" not in entry.usable_by:
        return "a1111"
    if entry.kind == "checkpoint" and entry.layout == "ldm":
        return "diffusers"
    return None


def target_for_engine(entry: LiveEntry, engine: Engine) -> Target | None:
    """The conversion a job needs before ``engine`` can use ``entry`` (None: usable as it is).

    The A1111 outputs (kohya LoRA files, single-file checkpoints) serve both engines.
    """
    if entry.usable_by is None or engine in entry.usable_by:
        return None
    return "a1111"


def check_convertible(entry: LiveEntry, target: Target) -> bool:
    """True when a conversion to ``target`` applies; False when the entry is already usable that way.

    Raises:
        ConversionFailed: the entry can never be converted to ``target`` (says why).
    """
    label = f"{entry.kind} {entry.file_name}"
    if not entry.usable:
        raise ConversionFailed(f"{label} cannot be converted: {entry.problem}")
    if target == "diffusers":
        if entry.kind != "checkpoint":
            raise ConversionFailed(
                f"{label}: only checkpoints convert to a diffusers folder; the embedded engine reads kohya, "
                "diffusers and PEFT LoRA files as they are"
            )
        if entry.format == "diffusers":
            return False
        if entry.layout != "ldm" or entry.format != "safetensors":
            raise ConversionFailed(f"{label} is not a safetensors single-file checkpoint")
        return True
    if entry.usable_by is None or "a1111" in entry.usable_by:
        return False
    if entry.kind not in ("checkpoint", "lora"):
        raise ConversionFailed(f"{label}: {entry.kind}s need no conversion (A1111 reads them as they are)")
    if entry.kind == "lora" and entry.layout not in ("diffusers", "peft"):
        raise ConversionFailed(f"{label} has no LoRA layout this converter knows ({entry.layout})")
    return True


def output_name(entry: LiveEntry, target: Target) -> str:
    """The output's file name in the same kind folder (see the module docstring)."""
    path = PurePosixPath(entry.file_name)
    parent = path.parent
    if target == "diffusers":
        return str(parent / f"{path.stem}-diffusers")
    if entry.kind == "checkpoint":
        return str(parent / f"{path.name}.safetensors")
    if entry.format == "training":
        step = entry.details.get("step")
        run = parent.name or path.name
        label = f"{run}-step{step}" if step is not None and parent.name else path.name
        return str(parent / f"{label}-kohya.safetensors")
    stem = path.stem
    if stem in _GENERIC_STEMS and parent.name:
        stem = parent.name
    return str(parent / f"{stem}-kohya.safetensors")


def conversion_hint(entry: LiveEntry, target: Target = "a1111") -> str:
    """The command that fixes it, as an operator types it."""
    return f"python -m worker registry convert {KIND_DIRS[entry.kind]}/{entry.file_name} --to {target}"


def _output_format(target: Target) -> str:
    return "diffusers" if target == "diffusers" else "safetensors"


def existing_conversion(
    registry: LiveRegistry, source: LiveEntry, target: Target, options: dict[str, Any]
) -> LiveEntry | None:
    """A registered output of ``source`` (same content, same converter and options) for ``target``, or the
    file ``source`` itself was converted from, when that one still matches its recorded hash."""
    for entry in registry.models.values():
        lineage = entry.lineage
        if (
            lineage is not None
            and entry.usable
            and lineage.source == source.key
            and lineage.source_sha256 == source.sha256
            and lineage.converter == CONVERTER_VERSION
            and lineage.options == options
            and entry.format == _output_format(target)
        ):
            return entry
    if source.lineage is not None:
        origin = registry.models.get(source.lineage.source)
        if (
            origin is not None
            and origin.usable
            and origin.sha256 == source.lineage.source_sha256
            and origin.format == _output_format(target)
        ):
            return origin
    return None


def options_for(target: Target, *, half: bool, alpha: float | None) -> dict[str, Any]:
    return {"target": target, "half": half, "alpha": alpha}


def output_key(entry: LiveEntry, target: Target) -> str:
    return entry_key(entry.kind, output_name(entry, target))


def engine_gap(entry: LiveEntry, engine: str) -> str:
    """Why ``engine`` cannot use ``entry`` as it is, in one clause."""
    if entry.format == "training":
        return "no engine loads a training folder"
    if entry.format == "diffusers":
        return "A1111 loads single-file checkpoints only"
    if engine == "a1111":
        return "A1111 would skip every one of its keys silently"
    return f"the {engine} engine cannot apply it"
