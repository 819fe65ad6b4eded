"""Entry points for spawned test processes (importable by multiprocessing's spawn start method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.registry.conftest import registry_kwargs
from worker.registry.models import LiveEntry
from worker.registry.registry import ModelRegistry
from worker.registry.store import RegistryStore


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


def provision_many(models_dir: str, port: int, catalogue: dict[str, Any], refs: list[str]) -> list[str]:
    registry = ModelRegistry(**registry_kwargs(Path(models_dir), _Port(port), catalogue))  # type: ignore[arg-type]
    out = []
    for ref in refs:
        got = registry.provision("lora", ref)
        assert got is not None
        registry.record_use("lora", got.facts.file_name)
        out.append(got.facts.sha256 or "")
    registry.flush_uses()  # pool processes end with os._exit: atexit would not run
    return out


def write_forever(registry_path: str) -> None:
    store = RegistryStore(Path(registry_path))
    i = 0
    while True:
        i += 1

        def change(reg: Any, i: int = i) -> None:
            for j in range(200):  # a large file makes a kill mid-write likely
                reg.models[f"lora/f{j}.safetensors"] = LiveEntry(
                    kind="lora", file_name=f"f{j}.safetensors", size=i, mtime_ns=i, format="safetensors"
                )

        store.update(change)


def convert_in_process(models_dir: str, reference: str, queue: Any) -> None:
    """Convert ``reference`` for A1111 through the registry; report (status, output key)."""
    registry = ModelRegistry(**registry_kwargs(Path(models_dir), None, None))
    found = registry.resolve("lora", reference)
    assert found.live is not None
    result = registry.convert(found.live, "a1111")
    queue.put((result.status, result.output.key if result.output else None))
