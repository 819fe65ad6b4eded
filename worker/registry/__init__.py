"""The model registry: what models exist on the volume, what the catalogue knows, and how to fetch them.

The job path sees it only as a ``worker.model_types.ModelProvider`` (``ModelRegistry`` is built once, by
``worker.handler.JobRunner.from_settings``); the CLI (``worker.registry.cli.main``) is for operators.
"""

from __future__ import annotations

from worker.registry.registry import ModelRegistry

__all__ = ["ModelRegistry"]
