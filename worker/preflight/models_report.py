"""The output's ``models``: what a job will really use, with hashes and architectures; and the refusal of
add-ons built for another architecture than the checkpoint (``worker.compatibility``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.a1111.catalog import CheckpointEntry, LoraEntry
from worker.compatibility import check_compatible
from worker.model_types import ModelFacts, ModelType
from worker.preflight.matching import checkpoint_file

VAE_SPECIAL = ("Automatic", "None")

Describe = Callable[[ModelType, str], ModelFacts | None]


def models_used(
    describe: Describe,
    checkpoint: CheckpointEntry | None,
    loras: tuple[tuple[LoraEntry, float], ...],
    vae: str | None,
) -> dict[str, Any]:
    """``{"checkpoint", "loras", "vae"}`` for the output; ``checkpoint`` is the one the job runs on.

    Raises:
        ModelIncompatible: a LoRA's architecture differs from the checkpoint's.
    """
    checkpoint_facts = describe("checkpoint", checkpoint_file(checkpoint)) if checkpoint else None
    if vae is not None and vae not in VAE_SPECIAL:
        describe("vae", vae)  # an unusable file (e.g. a link out of the volume) is refused here too
    lora_facts = [describe("lora", entry.name) for entry, _ in loras]
    if checkpoint_facts is not None:
        check_compatible(checkpoint_facts, [facts for facts in lora_facts if facts is not None])
    return {
        "checkpoint": _checkpoint_report(checkpoint, checkpoint_facts) if checkpoint else None,
        "loras": [
            {
                "name": entry.name,
                "weight": weight,
                "sha256": facts.sha256 if facts else None,
                "architecture": facts.architecture if facts else None,
            }
            for (entry, weight), facts in zip(loras, lora_facts, strict=True)
        ],
        "vae": vae,
    }


def _checkpoint_report(checkpoint: CheckpointEntry, facts: ModelFacts | None) -> dict[str, Any]:
    sha256 = checkpoint.sha256 or (facts.sha256 if facts else None)
    return {
        "title": checkpoint.title,
        "sha256": sha256,
        "short_hash": sha256[:10] if sha256 else None,
        "architecture": facts.architecture if facts else None,
    }
