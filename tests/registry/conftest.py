"""Registry test fixtures: a models folder, a catalogue, and a registry wired to the loopback server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.model_server import ModelServer, model_server  # noqa: F401  (fixture)
from worker.registry.hashing import FileHashes, hash_file
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry


class CountingHasher:
    """Wraps the real hasher and counts full-file hashes (a warm scan must hash nothing)."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path, addnet_offset: int | None = None, progress: Any = None) -> FileHashes:
        self.calls.append(path)
        return hash_file(path, addnet_offset, progress)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for sub in ("checkpoints", "loras", "embeddings", "vae"):
        (root / sub).mkdir(parents=True)
    return root


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


def registry_kwargs(
    models_dir: Path, server: ModelServer | None, catalogue: dict[str, Any] | None
) -> dict[str, Any]:
    doc = catalogue or {"schema_version": 1, "models": []}
    port = server.port if server else 0
    return {
        "models_dir": models_dir,
        "registry_path": models_dir / "registry.json",
        "catalogue": Catalogue.model_validate(doc),
        "allowed_hosts": (f"127.0.0.1:{port}",),
        "civitai_api_base": f"http://127.0.0.1:{port}/api/v1",
        "hf_base": f"http://127.0.0.1:{port}/hf",
        "timeout_s": 5.0,
        "attempts": 4,
        "backoff_s": 0.01,
        "lock_timeout_s": 30.0,
    }


@pytest.fixture
def make_registry(
    models_dir: Path,
    model_server: ModelServer,  # noqa: F811  (the imported fixture)
    hasher: CountingHasher,
) -> Callable[..., ModelRegistry]:
    def make(catalogue: dict[str, Any] | None = None, **overrides: Any) -> ModelRegistry:
        kwargs = registry_kwargs(models_dir, model_server, catalogue)
        kwargs["hasher"] = hasher
        kwargs.update(overrides)
        return ModelRegistry(**kwargs)

    return make


def catalogue_doc(*entries: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({"schema_version": 1, "models": list(entries)}))
