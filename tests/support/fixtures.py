"""Named JSON fixtures (tests/fixtures/) shared by tests and the docs' examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.a1111.catalog import CheckpointEntry, EngineCatalog, LoraEntry, SamplerEntry, SchedulerEntry
from worker.a1111.endpoints import RefreshKind
from worker.a1111.extensions import ExtensionCatalog

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load_json(relative: str) -> Any:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def job_fixture(name: str) -> dict[str, Any]:
    job: dict[str, Any] = load_json(f"jobs/{name}.json")
    return job


def job_names(prefix: str = "") -> list[str]:
    return sorted(p.stem for p in (FIXTURES / "jobs").glob(f"{prefix}*.json"))


def engine_catalog() -> EngineCatalog:
    data = load_json("engine_catalog.json")
    return EngineCatalog(
        checkpoints=tuple(CheckpointEntry(**c) for c in data["checkpoints"]),
        samplers=tuple(SamplerEntry(s["name"], tuple(s["aliases"])) for s in data["samplers"]),
        schedulers=tuple(
            SchedulerEntry(s["name"], s["label"], tuple(s["aliases"])) for s in data["schedulers"]
        ),
        loras=tuple(LoraEntry(**lora) for lora in data["loras"]),
        embeddings=tuple(data["embeddings"]),
        vaes=tuple(data["vaes"]),
        upscalers=tuple(data["upscalers"]),
        current_checkpoint=data["current_checkpoint"],
    )


class StaticEngineLists:
    """A fixed catalog for pre-flight's pure paths; records refreshes so tests can assert them."""

    def __init__(self, catalog: EngineCatalog) -> None:
        self._catalog = catalog
        self.extension_catalog = ExtensionCatalog()
        self.refreshed: list[str] = []
        self.fetches = 0

    def catalog(self, *, refresh: bool = False) -> EngineCatalog:
        self.fetches += 1
        return self._catalog

    def refresh(self, kind: RefreshKind) -> None:
        self.refreshed.append(kind)

    def extensions(self, *, refresh: bool = False) -> ExtensionCatalog:
        return self.extension_catalog
