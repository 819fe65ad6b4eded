"""The model registry: what models exist on the volume, what the catalogue knows, and how to fetch them.

The job path sees it only as a ``worker.model_types.ModelProvider`` (``ModelRegistry`` is built once, by
``worker.handler.JobRunner.from_settings``); the CLI (``worker.registry.cli.main``) is for operators.

``ModelRegistry`` is imported on first use: importing a light part of the package (``worker.registry.detect``)
does not load the downloader, the locks and the HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.registry.registry import ModelRegistry

__all__ = ["ModelRegistry"]


def __getattr__(name: str) -> Any:
    if name == "ModelRegistry":
        from worker.registry.registry import ModelRegistry

        return ModelRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
