"""Types shared by the registry (which knows files) and the job path (which names models).

The job path depends only on the ``ModelProvider`` protocol, so it can be tested with the real
registry or without one, and the registry never needs to know about jobs or the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

#: what a model file is for (its folder on the volume); not an architecture, which is ``Architecture``
#: (which diffusers pipeline a checkpoint needs is ``worker.registry.pipeline_configs.PipelineKind``)
#: ``controlnet`` and ``adetailer`` (YOLO detectors) are the A1111 extensions' models (docs/extensions.md);
#: ``upscaler``: ESRGAN-family image upscalers (ESRGAN, RealESRGAN, SwinIR, DAT, HAT) for extras and hires fix
ModelType = Literal["checkpoint", "lora", "embedding", "vae", "controlnet", "adetailer", "upscaler"]
MODEL_TYPES: tuple[ModelType, ...] = (
    "checkpoint",
    "lora",
    "embedding",
    "vae",
    "controlnet",
    "adetailer",
    "upscaler",
)

#: Architectures the registry detects; anything else is reported but refused for generation.
Architecture = Literal["sd15", "sd2", "sdxl", "sdxl_refiner", "flux", "sd3", "unknown"]


@dataclass(frozen=True)
class ModelFacts:
    """What the registry knows about one local model file."""

    kind: ModelType
    file_name: str  # path relative to the kind's folder, e.g. "Deliberate_v6.safetensors"
    architecture: Architecture | None = None
    sha256: str | None = None
    short_hash: str | None = None  # A1111's 10-character sha256 prefix
    default_weight: float | None = None
    trigger_words: tuple[str, ...] = ()
    registry_id: str | None = None
    #: key layout (``kohya``, ``diffusers``, ``peft``, ``ldm``...) and the engines that use the model as it is
    #: (None: not known, treated as usable); ``format`` ``diffusers``/``training`` for model folders
    layout: str | None = None
    usable_by: tuple[str, ...] | None = None
    format: str | None = None
    #: a checkpoint's UNet input channels: 4 plain, 9 inpainting, 8 instruct-pix2pix (None: not known)
    unet_in_channels: int | None = None


@dataclass(frozen=True)
class ProvisionedModel:
    """A model made present on disk (downloaded now or found already there)."""

    facts: ModelFacts
    downloaded: bool = False
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    #: the model a conversion started from, when ``facts`` describe its converted form
    converted_from: str | None = None
    converted_now: bool = False


class ModelProvider(Protocol):
    """The registry as seen by the job path."""

    def describe(self, kind: ModelType, reference: str) -> ModelFacts | None:
        """Facts about a model that is present locally, found by any reference form; None if absent."""

    def catalogue_file(self, kind: ModelType, reference: str) -> str | None:
        """The file name of the catalogue entry ``reference`` names, without downloading; None if none.

        A model baked into the image is listed by the engine under that name but is not on the volume.
        """

    def provision(self, kind: ModelType, reference: str) -> ProvisionedModel | None:
        """Make the referenced model present (downloading a catalogue entry if needed).

        Returns None when the registry does not know the reference at all. Raises
        ``DownloadFailed`` when a known model could not be fetched, ``ModelNotFound`` when an
        explicit remote reference (``civitai:…``, ``repo/file``) does not resolve.
        """

    def record_use(self, kind: ModelType, file_name: str) -> None:
        """Note that a job used the file (last_used, use_count) for LRU eviction."""

    def convert_for(
        self, kind: ModelType, file_name: str, engine: str, *, base: str | None = None
    ) -> ProvisionedModel:
        """The model as ``engine`` can use it: itself, an earlier conversion, or one made now (cached on
        the volume). ``base`` is the job's checkpoint file (a LoRA's block layout follows it).

        Raises ``ModelIncompatible`` naming the conversion command when automatic conversion is off
        or the model cannot be converted.
        """
