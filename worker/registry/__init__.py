"""The model registry: what models exist on the volume, what the catalogue knows, and how to fetch them.

The job path only needs ``ModelRegistry`` (a ``worker.model_types.ModelProvider``) and
``check_compatible``; the CLI (``worker.registry.cli.main``) is for operators.

``ModelRegistry`` is imported on first use: importing a light part of the package
(``worker.registry.compat``, ``worker.registry.detect``) does not load the downloader, the locks and
the HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.registry.compat import check_compatible

if TYPE_CHECKING:
    from worker.registry.registry import ModelRegistry

__all__ = ["ModelRegistry", "check_compatible"]


def __getattr__(name: str) -> Any:
    if name == "ModelRegistry":
        from worker.registry.registry import ModelRegistry

        return ModelRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
