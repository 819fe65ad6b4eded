"""Config skeletons: json-only diffusers folders for SD1.5 and SDXL single files, written locally.

``from_single_file`` takes every component's architecture from a diffusers-layout folder of json
files; without one it goes to the Hugging Face hub. The engine writes that folder itself from the
registry's configs (``worker.registry.pipeline_configs``): the public SD1.5 and SDXL-base architectures
for real checkpoints, or the exact configs a tiny model carries in its safetensors metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from diffusers import __version__ as diffusers_version

from worker.registry.pipeline_configs import SCHEDULER, PipelineKind, model_index


def write_skeleton(
    root: Path, kind: PipelineKind, configs: dict[str, dict[str, Any]], tokenizer_dir: Path
) -> Path:
    """Write (once per distinct config) the json-only diffusers folder that ``from_single_file`` needs."""
    blob = json.dumps({"kind": kind, "configs": configs, "tok": str(tokenizer_dir)}, sort_keys=True)
    folder = root / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if (folder / "model_index.json").is_file():
        return folder
    files: dict[str, dict[str, Any]] = {
        "model_index.json": {**model_index(kind), "_diffusers_version": diffusers_version},
        "scheduler/scheduler_config.json": SCHEDULER,
    }
    for component, config in configs.items():
        files[f"{component}/config.json"] = {**config, "_diffusers_version": diffusers_version}
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    for sub in ("tokenizer", "tokenizer_2") if kind == "sdxl" else ("tokenizer",):
        for name in ("vocab.json", "merges.txt"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / name).write_bytes((tokenizer_dir / name).read_bytes())
    return folder
