"""Finding a model a job names: the engine's lists first, then the registry (which may download it or
convert it to a layout the engine can use), with one rescan of the engine's folder on a miss.

One ``ModelLookup`` per job: it remembers which lists it refreshed, what the registry said, what was
downloaded or converted, and how long provisioning took.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from worker.a1111.catalog import EngineCatalog
from worker.a1111.endpoints import RefreshKind
from worker.a1111.extensions import ExtensionCatalog
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineFailed
from worker.model_types import ModelFacts, ModelProvider, ModelType
from worker.preflight.matching import find_checkpoint, find_lora, stem

log = logging.getLogger(__name__)

FoundT = TypeVar("FoundT")
REFRESH_KIND: dict[ModelType, RefreshKind] = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "embedding": "embeddings",
    "vae": "vae",
}


class EngineLists(Protocol):
    """The part of ``worker.a1111.client.A1111Client`` that pre-flight needs."""

    def catalog(self, *, refresh: bool = False) -> EngineCatalog: ...

    def refresh(self, kind: RefreshKind) -> None: ...

    def extensions(self, *, refresh: bool = False) -> ExtensionCatalog: ...


class ModelLookup:
    """The engine's lists and the registry, as one job sees them (module docstring).

    Args:
        engine_kind: ``a1111`` or ``embedded``: decides which model layouts need a conversion first.
    """

    def __init__(
        self,
        engine: EngineLists,
        provider: ModelProvider | None,
        *,
        engine_kind: str,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._engine = engine
        self._provider = provider
        self._engine_kind = engine_kind
        self._clock = clock
        self.catalog = engine.catalog()
        self._refreshed: set[ModelType] = set()
        self._lists_refetched = False
        self._described: dict[tuple[ModelType, str], ModelFacts | None] = {}
        #: the checkpoint file the job runs on (a LoRA's conversion follows its block layout)
        self.base_checkpoint: str | None = None
        self.provision_ms = 0.0
        self.downloaded: list[str] = []
        self.conversion_warnings: list[str] = []
        #: (kind, reference) -> the converted file ``find`` answered with instead of the referenced one
        self.converted: dict[tuple[ModelType, str], str] = {}

    def find(self, kind: ModelType, ref: str, match: Callable[[str], FoundT | None]) -> FoundT | None:
        """Engine lists, then the registry's local knowledge, then a download, then one refresh."""
        found = match(ref) or self._baked(kind, ref, match)
        if found is not None:
            return found
        facts = self._registry_facts(kind, ref)
        if facts is None:
            self.refresh(kind)
            return match(ref)
        usable = self.usable(kind, facts)
        if usable.file_name != facts.file_name:
            self.converted[(kind, ref)] = usable.file_name
        facts = usable
        found = match(facts.file_name) or match(stem(facts.file_name))
        if found is None:
            self.refresh(kind)
            found = match(facts.file_name) or match(stem(facts.file_name))
        if found is None:
            raise EngineFailed(
                f"{kind} {facts.file_name!r} is on the volume but the engine does not list it "
                "even after a refresh; check the engine's model folders"
            )
        return found

    def _baked(self, kind: ModelType, ref: str, match: Callable[[str], FoundT | None]) -> FoundT | None:
        """A catalogue entry the engine already lists under its file name (baked into the image): never
        downloaded again onto the volume."""
        name = self._provider.catalogue_file(kind, ref) if self._provider else None
        return (match(name) or match(stem(name))) if name else None

    def provisioned(self, kind: ModelType, ref: str) -> ModelFacts | None:
        """A model an extension names that it does not list: on the volume, or a catalogue entry downloaded
        now (the same policy, timing and ``downloaded`` note as the other kinds)."""
        return self._registry_facts(kind, ref)

    def _registry_facts(self, kind: ModelType, ref: str) -> ModelFacts | None:
        """What the registry knows of ``ref``, provisioning (downloading) a catalogue entry first."""
        if self._provider is None:
            return None
        facts = self._provider.describe(kind, ref)
        if facts is not None:
            return facts
        started = self._clock.monotonic()
        provisioned = self._provider.provision(kind, ref)
        self.provision_ms += (self._clock.monotonic() - started) * 1000
        if provisioned is None:
            return None
        if provisioned.downloaded:
            self.downloaded.append(f"{kind}:{provisioned.facts.file_name}")
        return provisioned.facts

    def usable(self, kind: ModelType, facts: ModelFacts) -> ModelFacts:
        """``facts``, or those of its conversion when this engine cannot use the model as it is."""
        if self._provider is None or facts.usable_by is None or self._engine_kind in facts.usable_by:
            return facts
        started = self._clock.monotonic()
        provisioned = self._provider.convert_for(
            kind, facts.file_name, self._engine_kind, base=self.base_checkpoint
        )
        seconds = self._clock.monotonic() - started
        self.provision_ms += seconds * 1000
        if provisioned.converted_from is not None and provisioned.facts.file_name != facts.file_name:
            done = f"in {seconds:.1f} s" if provisioned.converted_now else "earlier"
            self.conversion_warnings.append(
                f"{kind} {facts.file_name} ({facts.layout or facts.format} layout) cannot be used by "
                f"{self._engine_kind} as it is: using {provisioned.facts.file_name}, converted {done}"
            )
            if not self._listed(kind, provisioned.facts.file_name):
                self.refresh(kind, force=True)  # a file converted after the engine's last listing
        return provisioned.facts

    def _listed(self, kind: ModelType, file_name: str) -> bool:
        if kind == "lora":
            return find_lora(self.catalog, stem(file_name)) is not None
        return kind == "checkpoint" and find_checkpoint(self.catalog, file_name) is not None

    def refresh(self, kind: ModelType, *, force: bool = False) -> None:
        """Rescan the engine's folder of ``kind``, once per job unless ``force``."""
        if kind in self._refreshed and not force:
            return
        self._refreshed.add(kind)
        log.info("refreshing the engine's %s list after a miss", kind)
        self._engine.refresh(REFRESH_KIND[kind])
        self.catalog = self._engine.catalog(refresh=True)

    def refetch_lists(self) -> bool:
        """Samplers, schedulers and upscalers: re-read the lists once per job on a miss."""
        if self._lists_refetched:
            return False
        self._lists_refetched = True
        self.catalog = self._engine.catalog(refresh=True)
        return True

    def describe(self, kind: ModelType, ref: str) -> ModelFacts | None:
        """The registry's facts, asked once per job and name (each ask reads the registry file)."""
        if self._provider is None:
            return None
        if (kind, ref) not in self._described:
            self._described[(kind, ref)] = self._provider.describe(kind, ref)
        return self._described[(kind, ref)]
