"""The registry job contract, shared by the job path (which parses and dispatches it) and the registry's job
runner (``worker.registry.jobs``, which carries it out): pure data, no I/O.

A registry job is ``{"input": {"registry": {"action": ...}}}`` (docs/api.md#registry-jobs). The popular
network-volume worker's ``/v1/download`` and ``/v1/sync`` envelopes map onto ``pull`` and ``sync``
(``peer_action``). The job path reaches the runner only through the ``ModelJobs`` protocol, as it reaches
the registry only through ``ModelProvider``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from worker.model_types import ModelType

#: a sha256 as 64 hex digits, either case (kept lower-case, as the registry records it)
Sha256 = Annotated[
    str,
    BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value),
    Field(pattern=r"^[0-9a-f]{64}$"),
]
#: a path or name inside the models folder (sub-folders allowed; the runner checks containment)
MAX_PATH = 1000


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ListAction(_Action):
    """What is on the volume, per kind, with hashes, architecture, usability and why a file is unusable."""

    action: Literal["list"]
    kind: ModelType | None = None


class PullAction(_Action):
    """Bring one model onto the volume: a catalogue id, ``civitai:<model>[@<version>]``, Hugging Face
    ``[hf:]owner/repo/file``, or an http(s) URL (``sha256`` verifies it; ``dest`` names where it goes)."""

    action: Literal["pull"]
    ref: str = Field(min_length=1, max_length=MAX_PATH)
    kind: ModelType | None = None
    sha256: Sha256 | None = None
    #: a path inside one of the model folders (absolute, or relative to the models folder): the folder
    #: gives the kind; a name ending in a model suffix is the file name, anything else a folder
    dest: str | None = Field(None, min_length=1, max_length=MAX_PATH)


class RemoveAction(_Action):
    """Delete one model (file or model folder) from the volume and forget it."""

    action: Literal["remove"]
    ref: str = Field(min_length=1, max_length=MAX_PATH)
    kind: ModelType | None = None


class EvictAction(_Action):
    """Least recently used downloads deleted until the registered total fits ``target_gb``."""

    action: Literal["evict"]
    target_gb: float = Field(ge=0)
    dry_run: bool = False


class ConvertAction(_Action):
    """The training-output conversions (``python -m worker registry convert``) as a job."""

    action: Literal["convert"]
    src: str = Field(min_length=1, max_length=MAX_PATH)
    kind: ModelType | None = None
    to: Literal["a1111", "diffusers"] | None = None
    half: bool = False
    force: bool = False
    base: str | None = Field(None, min_length=1, max_length=MAX_PATH)
    alpha: float | None = Field(None, gt=0)


class SyncAction(_Action):
    """A Hugging Face repository (or one folder of it) into the models folder, each file verified."""

    action: Literal["sync"]
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", max_length=200)
    revision: str = Field("main", min_length=1, max_length=200)
    folder: str | None = Field(None, min_length=1, max_length=MAX_PATH)
    include: list[str] = Field(default_factory=lambda: ["*.safetensors"], min_length=1, max_length=50)
    #: the models folder (each file's kind from its first folder) or a folder inside a kind folder
    dest: str | None = Field(None, min_length=1, max_length=MAX_PATH)
    kind: ModelType | None = None
    hf_token: SecretStr | None = None


RegistryAction = Annotated[
    ListAction | PullAction | RemoveAction | EvictAction | ConvertAction | SyncAction,
    Field(discriminator="action"),
]


class RegistryJobInput(BaseModel):
    """A job's whole ``input`` in the registry form."""

    model_config = ConfigDict(extra="forbid")

    registry: RegistryAction


class PeerDownload(BaseModel):
    """The network-volume worker's ``/v1/download`` payload."""

    model_config = ConfigDict(extra="forbid")

    source_url: str = Field(min_length=1, max_length=4000)
    download_path: str = Field(min_length=1, max_length=MAX_PATH)
    sha256: Sha256 | None = None


class PeerSync(BaseModel):
    """The network-volume worker's ``/v1/sync`` payload (``hf_token`` is optional here: HF_TOKEN serves)."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", max_length=200)
    sync_path: str = Field(min_length=1, max_length=MAX_PATH)
    hf_token: SecretStr | None = None


#: envelope endpoints of the network-volume worker that are registry jobs here
PEER_ENDPOINTS: dict[str, type[BaseModel]] = {"v1/download": PeerDownload, "v1/sync": PeerSync}


def peer_action(payload: BaseModel) -> PullAction | SyncAction:
    """The registry action a validated peer payload means."""
    if isinstance(payload, PeerDownload):
        return PullAction(
            action="pull", ref=payload.source_url, dest=payload.download_path, sha256=payload.sha256
        )
    assert isinstance(payload, PeerSync)
    return SyncAction(
        action="sync",
        repo=payload.repo_id,
        dest=payload.sync_path,
        include=["*.safetensors"],
        hf_token=payload.hf_token,
    )


@dataclass(frozen=True)
class ModelJobRequest:
    """A parsed registry job; ``form`` says how it was spelled (``registry`` or ``envelope``)."""

    action: ListAction | PullAction | RemoveAction | EvictAction | ConvertAction | SyncAction
    form: Literal["registry", "envelope"] = "registry"


#: a progress update for the caller (RunPod's ``progress_update`` output while the job runs)
ProgressReport = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ModelJobOutcome:
    """What a registry job did: its output, and the kinds whose folders changed (the engine rescans them)."""

    output: dict[str, Any]
    changed: tuple[ModelType, ...] = ()
    warnings: list[str] = field(default_factory=list)


class ModelJobs(Protocol):
    """The registry's job runner as the job path sees it (``worker.registry.jobs.RegistryJobs``)."""

    def run(
        self,
        action: ListAction | PullAction | RemoveAction | EvictAction | ConvertAction | SyncAction,
        *,
        report: ProgressReport,
        cancelled: Callable[[], bool],
    ) -> ModelJobOutcome:
        """Carry out ``action``; ``report`` gets progress updates, ``cancelled()`` is polled between chunks.

        Raises a ``WorkerError`` naming what was done before it stopped (never a partial file left behind).
        """
