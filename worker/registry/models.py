"""Pydantic models of the two JSON formats: the catalogue (what could exist), the live registry (what does).

Both carry ``schema_version`` so a newer worker can migrate an older file and an older worker can
refuse a newer one instead of misreading it. docs/registry.md documents every field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.errors import InputInvalid
from worker.model_types import Architecture, ModelType
from worker.registry.names import safe_relative_name

CATALOGUE_SCHEMA_VERSION = 1
#: 2 added training outputs (folders), LoRA layouts, the engines each file works with, and lineage
REGISTRY_SCHEMA_VERSION: Literal[2] = 2

_SHA256_CHARS = frozenset("0123456789abcdef")


def _check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or not set(value) <= _SHA256_CHARS:
        raise ValueError("sha256 must be 64 hexadecimal characters")
    return value


def _safe(value: str, what: str) -> str:
    try:
        return safe_relative_name(value, what=what)
    except InputInvalid as exc:  # pydantic turns ValueError into a validation error with the location
        raise ValueError(exc.message) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HuggingFaceSource(_Strict):
    type: Literal["huggingface"] = "huggingface"
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    file: str
    revision: str = "main"

    @field_validator("file")
    @classmethod
    def _safe_file(cls, value: str) -> str:
        return _safe(value, "huggingface file")


class CivitaiSource(_Strict):
    type: Literal["civitai"] = "civitai"
    model_id: int = Field(gt=0)
    version_id: int | None = Field(None, gt=0)
    #: picks the version by name when ``version_id`` is unknown (never silently "the latest")
    version_name: str | None = None


class UrlSource(_Strict):
    type: Literal["url"] = "url"
    url: str = Field(pattern=r"^https?://")


class UnknownSource(_Strict):
    type: Literal["unknown"] = "unknown"
    note: str = ""


Source = Annotated[HuggingFaceSource | CivitaiSource | UrlSource | UnknownSource, Field(discriminator="type")]


class CatalogueEntry(_Strict):
    """One model the operator knows about; it may or may not be on the volume."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    name: str = ""
    kind: ModelType
    file_name: str | None = None
    architecture: Architecture | None = None
    source: Source = Field(default_factory=UnknownSource)
    sha256: str | None = None
    size: int | None = Field(None, ge=0)
    default_weight: float | None = None
    trigger_words: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    pinned: bool = False
    notes: str = ""

    @field_validator("file_name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        return None if value is None else _safe(value, "catalogue file_name")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        return _check_sha256(value)


class Catalogue(_Strict):
    schema_version: Literal[1] = 1
    description: str = ""
    models: tuple[CatalogueEntry, ...] = ()

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, value: tuple[CatalogueEntry, ...]) -> tuple[CatalogueEntry, ...]:
        seen: set[str] = set()
        for entry in value:
            if entry.id in seen:
                raise ValueError(f"duplicate catalogue id {entry.id!r}")
            seen.add(entry.id)
        return value


class Lineage(BaseModel):
    """Where a converted model came from: enough to tell whether it is still current."""

    model_config = ConfigDict(extra="forbid")

    source: str  # the source's registry key (``lora/run/checkpoint-500``)
    source_sha256: str | None
    converter: str  # ``worker.registry.convert.CONVERTER_VERSION`` when it was written
    converted_at: float
    options: dict[str, Any] = Field(default_factory=dict)


class LiveEntry(BaseModel):
    """One file or model folder on the volume, as last seen by a scan, a download or a conversion."""

    model_config = ConfigDict(extra="forbid")

    kind: ModelType
    file_name: str
    size: int
    mtime_ns: int
    #: ``diffusers``: a pipeline folder; ``training``: a LoRA training folder (checkpoint-N, PEFT adapter)
    format: Literal["safetensors", "pickle", "other", "diffusers", "training"]
    sha256: str | None = None
    short_hash: str | None = None
    addnet_hash: str | None = None
    detected_kind: ModelType | None = None
    architecture: Architecture | None = None
    usable: bool = True
    problem: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    #: key layout: ``ldm``/``diffusers`` (checkpoints), ``kohya``/``lycoris``/``diffusers``/``peft`` (LoRAs)
    layout: str | None = None
    #: engines that use it as it is (None: not known, treated as usable); the rest need a conversion
    usable_by: list[str] | None = None
    details: dict[str, Any] = Field(default_factory=dict)  # rank, precision, step, base model...
    lineage: Lineage | None = None
    registry_id: str | None = None
    source: dict[str, Any] | None = None
    downloaded: bool = False
    downloaded_at: float | None = None
    last_used: float | None = None
    use_count: int = 0

    @property
    def key(self) -> str:
        return entry_key(self.kind, self.file_name)


class LiveRegistry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1, 2] = REGISTRY_SCHEMA_VERSION
    scanned_at: float | None = None
    models: dict[str, LiveEntry] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _upgrade(cls, value: int) -> int:
        """A version-1 file reads as is (its new fields are absent) and is written back as the current one."""
        return REGISTRY_SCHEMA_VERSION


def entry_key(kind: str, file_name: str) -> str:
    return f"{kind}/{file_name}"
