"""Architecture compatibility between a checkpoint and the LoRAs/embeddings/VAE a job adds to it.

A rule over ``ModelFacts``, shared like ``worker.model_types``: pre-flight applies it to a job's models, the
registry's CLI prints the labels. It depends on nothing of the registry, so the job path need not load it.
"""

from __future__ import annotations

from worker.errors import ModelIncompatible
from worker.model_types import ModelFacts

#: architectures a job may use; the rest are reported but refused by ``check_compatible``
SUPPORTED_ARCHITECTURES: frozenset[str] = frozenset({"sd15", "sd2", "sdxl", "sdxl_refiner"})

_LABELS = {
    "sd15": "SD1.5",
    "sd2": "SD2",
    "sdxl": "SDXL",
    "sdxl_refiner": "SDXL refiner",
    "flux": "FLUX",
    "sd3": "SD3",
}


def label(architecture: str | None) -> str:
    return _LABELS.get(architecture or "", "unknown")


def _known(architecture: str | None) -> bool:
    return architecture not in (None, "unknown")


def check_compatible(checkpoint: ModelFacts, others: list[ModelFacts]) -> None:
    """Raise ``ModelIncompatible`` when an add-on was built for another architecture than the checkpoint.

    Unknown architectures (either side) are allowed: detection can miss exotic layouts, and a
    false refusal would block a working job. VAEs of SD1.x and SDXL are indistinguishable by shape,
    so a VAE is only checked when its metadata named an architecture.
    """
    arch = checkpoint.architecture
    if _known(arch) and arch not in SUPPORTED_ARCHITECTURES:
        raise ModelIncompatible(
            f"checkpoint {checkpoint.file_name} is a {label(arch)} model, which this worker does not run "
            f"(supported: SD1.5, SD2, SDXL)",
            details={"checkpoint": checkpoint.file_name, "architecture": arch},
        )
    if not _known(arch):
        return
    for other in others:
        if not _known(other.architecture) or other.architecture == arch:
            continue
        raise ModelIncompatible(
            f"{other.kind} {other.file_name} is for {label(other.architecture)} but checkpoint "
            f"{checkpoint.file_name} is {label(arch)}",
            details={
                "checkpoint": checkpoint.file_name,
                "checkpoint_architecture": arch,
                "model": other.file_name,
                "model_kind": other.kind,
                "model_architecture": other.architecture,
            },
        )
