"""Converters between training outputs and what A1111 reads, with safetensors + numpy only (no torch).

* ``checkpoint_from_diffusers`` (``to_single_file``): a diffusers SD1.x/SDXL pipeline folder -> an A1111
  single-file checkpoint.
* ``diffusers_from_checkpoint`` (``to_diffusers``): an A1111 single file -> a diffusers pipeline folder
  (weights and configs; no tokenizer files: the embedded engine brings its own, as for single files).
* ``kohya_from_lora`` (``to_kohya``): a diffusers/PEFT LoRA (files, or an accelerate ``checkpoint-N`` state)
  -> a kohya LoRA that both A1111 and diffusers apply, with each module's ``alpha`` carrying PEFT's scaling.

Tensors are streamed one at a time (``tensor_plan``): peak memory is about one tensor, and values are
copied bit for bit unless ``half`` casts floats to fp16. Every function writes only to the path it is
given; atomic placement, locks and lineage are ``worker.registry.conversion_runner``'s job.
"""

from __future__ import annotations

from worker.registry.convert.to_diffusers import diffusers_from_checkpoint
from worker.registry.convert.to_kohya import kohya_from_lora
from worker.registry.convert.to_single_file import checkpoint_from_diffusers

__all__ = ["checkpoint_from_diffusers", "diffusers_from_checkpoint", "kohya_from_lora"]
