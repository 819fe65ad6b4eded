"""The model registry: what models exist on the volume, what the catalogue knows, and how to fetch them.

The job path only needs ``ModelRegistry`` (a ``worker.model_types.ModelProvider``) and
``check_compatible``; the CLI (``worker.registry.cli.main``) is for operators.
"""

from __future__ import annotations

from worker.registry.compat import check_compatible
from worker.registry.registry import ModelRegistry

__all__ = ["ModelRegistry", "check_compatible"]
