"""The integration suite against a real AUTOMATIC1111 v1.10.1 (marker ``a1111``; docs/testing.md).

Runs when ``A1111_DIR`` (an install that start.sh launches, with small models built at test time) or
``A1111_URL`` (a running A1111, used with its own models) is set; skipped with that reason otherwise.
Each module gets its own engine, started and stopped with the module, so at most one runs at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.real_a1111 import (
    TINY,
    Launched,
    a1111_dir,
    a1111_url,
    launched,
    start_env,
    volume_with_tiny_models,
)
from worker.a1111.catalog import EngineCatalog
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry import ModelRegistry
from worker.settings import WorkerSettings

SKIP_REASON = (
    "needs a real A1111: set A1111_DIR (an A1111 v1.10.1 install that start.sh launches; "
    "scripts/setup_a1111.sh makes one) or A1111_URL (a running A1111); see docs/testing.md"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = None if (a1111_dir() or a1111_url()) else pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.a1111)
            if skip is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def install() -> Path:
    found = a1111_dir()
    if found is None:
        pytest.skip("needs A1111_DIR: this test launches A1111 through start.sh")
    return found


@dataclass
class Names:
    """The models a test may use, as the engine lists them (the tiny ones, or the first of each kind)."""

    checkpoint: str
    other_checkpoint: str | None
    lora: str | None
    lora_alias: str | None
    embedding: str | None
    vae: str | None

    @classmethod
    def discover(cls, catalog: EngineCatalog) -> Names:
        stems = [c.model_name for c in catalog.checkpoints]
        if TINY["checkpoint"] in stems:
            return cls(**TINY)
        lora = catalog.loras[0] if catalog.loras else None
        return cls(
            checkpoint=stems[0],
            other_checkpoint=stems[1] if len(stems) > 1 else None,
            lora=lora.name if lora else None,
            lora_alias=lora.alias if lora and lora.alias != lora.name else None,
            embedding=catalog.embeddings[0] if catalog.embeddings else None,
            vae=catalog.vaes[0] if catalog.vaes else None,
        )

    def need(self, attribute: str) -> str:
        value = getattr(self, attribute)
        if value is None:
            pytest.skip(f"the engine lists no {attribute.replace('_', ' ')}")
        return str(value)


@dataclass
class Engine:
    url: str
    models: Path | None  # the volume folder, when the suite launched this A1111
    started: Launched | None
    names: Names

    @property
    def fresh(self) -> bool:
        """A1111 launched here on a fresh data dir (what A1111 does on its own can be asserted)."""
        return self.started is not None

    def runner(self, **settings: Any) -> JobRunner:
        fields: dict[str, Any] = {"a1111_url": self.url, "job_timeout_s": 120, "progress_interval_s": 0.2}
        if self.models is not None:
            fields["models_dir"] = self.models
        config = WorkerSettings.model_validate({**fields, **settings})
        provider = ModelRegistry.from_settings(config) if self.models is not None else None
        return JobRunner(config, A1111Client(self.url, request_timeout_s=60), provider=provider)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A real A1111: ``A1111_URL`` as it is, else a fresh one launched by start.sh on the tiny models."""
    url = a1111_url()
    if url is not None:
        with A1111Client(url) as client:
            yield Engine(url=url, models=None, started=None, names=Names.discover(client.catalog()))
        return
    found = a1111_dir()
    assert found is not None
    tmp = tmp_path_factory.mktemp("a1111")
    models = volume_with_tiny_models(found, tmp / "models")
    with launched(start_env(found, tmp, models), tmp / "start.log") as started:
        with A1111Client(started.url) as client:
            names = Names.discover(client.catalog())
        yield Engine(url=started.url, models=models, started=started, names=names)


def info_of(output: Any) -> dict[str, Any]:
    assert isinstance(output, dict) and "error" not in output, output
    info: dict[str, Any] = json.loads(output["info"])
    return info
