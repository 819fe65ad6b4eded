"""Training outputs on the volume, recognised by header and layout only, and which engine can use each.

* **LoRA files** come in four key layouts: kohya (``lora_unet_…``, what A1111 applies), LyCORIS in
  kohya naming, diffusers (``unet.…lora_A.weight`` or ``….lora.down.weight``, written by
  ``save_lora_weights``) and bare PEFT (``…lora_A.weight`` with no component, or under
  ``base_model.model.``, as ``get_peft_model_state_dict`` and accelerate's ``save_state`` leave them).
* **diffusers pipeline folders** (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``…).
* **LoRA training folders**: accelerate ``checkpoint-N/`` (``model.safetensors`` or
  ``pytorch_lora_weights.safetensors`` + ``optimizer.bin`` …) and PEFT ``save_pretrained`` folders
  (``adapter_model.safetensors`` + ``adapter_config.json``).

Nothing here loads tensor data: headers and json files only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.model_types import Architecture
from worker.registry.keymaps import LoraLayout, guess_component, lora_layout, parse_lora_key
from worker.registry.safetensors_header import HeaderError, TensorInfo, read_header

Engine = Literal["a1111", "embedded"]
ENGINES: tuple[Engine, ...] = ("a1111", "embedded")

#: which engines apply a LoRA file of each layout as it is: A1111 skips every key it cannot map, silently;
#: the embedded engine applies diffusers and PEFT files through the same kohya conversion (diffusers' own
#: loader takes only part of some layouts diffusers writes, and skips a bare PEFT state, with a warning)
LORA_ENGINES: dict[LoraLayout, tuple[Engine, ...]] = {
    "kohya": ENGINES,
    "lycoris": ("a1111",),
    "diffusers": ("embedded",),
    "peft": ("embedded",),
}

MODEL_INDEX = "model_index.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_OPTIMIZER_FILES = ("optimizer.bin", "optimizer.pt", "optimizer.safetensors")
#: LoRA weight files a training folder may hold, preferred first
TRAINING_LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
_MODEL_FILE = re.compile(r"^model(?:_\d+)?\.safetensors$")
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
}


class LayoutError(ValueError):
    """A folder or file that looks like a training output but cannot be used (message says why)."""


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def folder_files(folder: Path) -> list[Path]:
    """Every regular file below ``folder`` (hidden names skipped), in a stable order."""
    return [p for p in _walk(folder) if p.is_file()]


def folder_stat(folder: Path) -> tuple[int, int]:
    """(total bytes, newest mtime_ns of the folder and its files): a folder's change key, like a file's."""
    size, newest = 0, folder.stat().st_mtime_ns
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        newest = max(newest, os.stat(dirpath).st_mtime_ns)
        for name in filenames:
            if name.startswith("."):
                continue
            st = os.stat(os.path.join(dirpath, name))
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    return size, newest


def is_diffusers_folder(folder: Path) -> bool:
    return (folder / MODEL_INDEX).is_file()


def is_training_folder(folder: Path) -> bool:
    """An accelerate ``checkpoint-N`` folder or a PEFT adapter folder (LoRA weights plus training state)."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if "adapter_config.json" in names and "adapter_model.safetensors" in names:
        return True
    has_weights = any(n in names for n in TRAINING_LORA_FILES) or any(_MODEL_FILE.match(n) for n in names)
    has_state = any(n in names for n in _OPTIMIZER_FILES)
    return has_weights and (has_state or bool(_CHECKPOINT_DIR.match(folder.name)))


# ---- LoRA files --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraFacts:
    """What a LoRA state is, from tensor names and shapes."""

    layout: LoraLayout
    rank: int | None
    modules: int
    components: tuple[str, ...]
    usable_by: tuple[Engine, ...]
    base_weights: bool = False  # the file also holds the base model's weights (a full training state)
    dora: bool = False


def lora_facts(tensors: dict[str, TensorInfo]) -> LoraFacts | None:
    """Layout, rank and components of a LoRA state; None when the names are not a LoRA at all."""
    layout = lora_layout(tensors)
    if layout is None:
        return None
    ranks: set[int] = set()
    modules: set[str] = set()
    components: set[str] = set()
    base_weights = dora = False
    for name, info in tensors.items():
        if layout in ("kohya", "lycoris"):
            module, _, part = name.partition(".")
            modules.add(module)
            components.add("unet" if module.startswith("lora_unet_") else module.split("_", 2)[1])
            if part == "lora_down.weight" and info.shape:
                ranks.add(info.shape[0])
            continue
        key = parse_lora_key(name)
        if key is None:
            base_weights = True
            continue
        modules.add(f"{key.component}.{key.module}")
        components.add(key.component or guess_component(key.module) or "unknown")
        if key.part == "down" and info.shape:
            ranks.add(info.shape[0])
        dora = dora or key.part == "magnitude"
    return LoraFacts(
        layout=layout,
        rank=max(ranks) if ranks else None,
        modules=len(modules),
        components=tuple(sorted(components)),
        usable_by=() if dora and layout != "kohya" else LORA_ENGINES[layout],
        base_weights=base_weights,
        dora=dora,
    )


# ---- diffusers pipeline folders ------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusersFolder:
    """A diffusers pipeline folder: its components' configs and safetensors weight files."""

    path: Path
    pipeline: str
    architecture: Architecture
    configs: dict[str, dict[str, Any]]
    weights: dict[str, list[Path]]  # component -> safetensors files (several when sharded)
    precision: str
    has_tokenizer: bool

    @property
    def pipeline_kind(self) -> Literal["sd15", "sdxl"]:
        if self.architecture not in ("sd15", "sdxl"):
            raise LayoutError(
                f"{self.path.name} is a {self.architecture} pipeline; only SD1.x and SDXL pipelines convert"
            )
        return "sd15" if self.architecture == "sd15" else "sdxl"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{path.parent.name}/{path.name} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{path.parent.name}/{path.name} is not a JSON object")
    return data


def component_weights(folder: Path) -> list[Path]:
    """A component's safetensors files: plain, an fp16 variant, or the shards its index names.

    Raises:
        LayoutError: only pickle weights (``.bin``), or no weights at all.
    """
    for base in _WEIGHT_NAMES:
        for variant in ("", ".fp16"):
            index = folder / f"{base}{variant}.safetensors.index.json"
            if index.is_file():
                weight_map = _read_json(index).get("weight_map") or {}
                shards = sorted({str(v) for v in weight_map.values()})
                missing = [s for s in shards if not (folder / s).is_file()]
                if missing or not shards:
                    raise LayoutError(
                        f"{folder.name}/: shards named by {index.name} are missing: {missing[:3]}"
                    )
                return [folder / s for s in shards]
            single = folder / f"{base}{variant}.safetensors"
            if single.is_file():
                return [single]
    if any(folder.glob("*.bin")):
        raise LayoutError(
            f"{folder.name}/ holds only pickle weights (.bin); re-save it with safe_serialization=True"
        )
    raise LayoutError(f"{folder.name}/ has no safetensors weights")


def _precision(files: list[Path]) -> str:
    dtypes: dict[str, int] = {}
    for file in files:
        for info in read_header(file).tensors.values():
            dtypes[info.dtype] = dtypes.get(info.dtype, 0) + info.end - info.start
    floats = {k: v for k, v in dtypes.items() if k in ("F16", "BF16", "F32", "F64")}
    if not floats:
        return "unknown"
    return {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64"}[max(floats, key=lambda k: floats[k])]


def inspect_diffusers_folder(folder: Path) -> DiffusersFolder:
    """Read ``model_index.json`` and each component's config; the weights' headers give the precision.

    Raises:
        LayoutError: naming what is missing or unreadable.
    """
    index = _read_json(folder / MODEL_INDEX)
    pipeline = str(index.get("_class_name") or "unknown")
    wanted = [c for c in ("unet", "vae", "text_encoder", "text_encoder_2") if isinstance(index.get(c), list)]
    wanted = [c for c in wanted if index[c][0] is not None]
    configs: dict[str, dict[str, Any]] = {}
    weights: dict[str, list[Path]] = {}
    for component in wanted:
        sub = folder / component
        if not (sub / "config.json").is_file():
            raise LayoutError(f"{folder.name}/{component}/config.json is missing")
        configs[component] = _read_json(sub / "config.json")
        weights[component] = component_weights(sub)
    if "unet" not in configs:
        raise LayoutError(f"{folder.name} has no unet/ (pipeline {pipeline})")
    width = configs["unet"].get("cross_attention_dim")
    family = _PIPELINES.get(pipeline)
    architecture: Architecture = "unknown"
    if family == "sdxl":
        architecture = "sdxl" if "text_encoder" in configs else "sdxl_refiner"
    elif family == "sd":  # SD2.x has OpenCLIP-H's width; anything else runs as SD1.x (tiny test models too)
        architecture = "sd2" if width == 1024 else "sd15"
    unet_files = weights["unet"]
    try:
        precision = _precision(unet_files)
    except HeaderError as exc:
        raise LayoutError(f"{folder.name}/unet: {exc}") from None
    return DiffusersFolder(
        path=folder,
        pipeline=pipeline,
        architecture=architecture,
        configs=configs,
        weights=weights,
        precision=precision,
        has_tokenizer=(folder / "tokenizer").is_dir(),
    )


# ---- LoRA training folders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingFolder:
    """A LoRA training folder: the weight files to convert and what is known about the run."""

    path: Path
    step: int | None
    lora_files: list[Path]
    optimizer: bool
    adapter_config: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None  # the base model's name as the training run recorded it


_BASE_MODEL_LINE = re.compile(r"^base_model:\s*(\S.*?)\s*$", re.MULTILINE)


def _recorded_base_model(folder: Path, adapter_config: dict[str, Any]) -> str | None:
    """PEFT's ``base_model_name_or_path``, else the ``base_model:`` line diffusers' training scripts
    write into the model card (README.md) of the training output folder."""
    name = adapter_config.get("base_model_name_or_path")
    if isinstance(name, str) and name:
        return name
    for card in (folder / "README.md", folder.parent / "README.md"):
        try:
            text = card.read_text(encoding="utf-8", errors="replace")[:20000]
        except OSError:
            continue
        m = _BASE_MODEL_LINE.search(text)
        if m:
            return m[1].strip("'\"")
    return None


def inspect_training_folder(folder: Path) -> TrainingFolder:
    """Which files hold the LoRA weights (``pytorch_lora_weights`` > adapter > ``model*.safetensors``).

    Raises:
        LayoutError: no LoRA weights in safetensors form.
    """
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    lora_files = [folder / n for n in TRAINING_LORA_FILES if n in names][:1]
    if not lora_files:
        lora_files = [folder / n for n in names if _MODEL_FILE.match(n)]
    if not lora_files:
        raise LayoutError(f"{folder.name}/ has no LoRA weights in safetensors form")
    adapter_config = _read_json(folder / "adapter_config.json") if "adapter_config.json" in names else {}
    m = _CHECKPOINT_DIR.match(folder.name)
    return TrainingFolder(
        path=folder,
        step=int(m[1]) if m else None,
        lora_files=lora_files,
        optimizer=any(n in names for n in _OPTIMIZER_FILES),
        adapter_config=adapter_config,
        base_model=_recorded_base_model(folder, adapter_config),
    )
