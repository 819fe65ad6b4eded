"""A registry job on the job path (docs/api.md#registry-jobs): refused unless the deployment allows it,
carried out through ``worker.model_job_types.ModelJobs`` (the registry's runner), then the engine's folders
that changed are rescanned so the next job sees the new files without a restart.

Anyone who may run a job could otherwise write to the volume, hence ``WORKER_ALLOW_MODEL_JOBS``. What
comes back (output and errors) never holds a token: the worker's own nor a job's ``hf_token``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from worker.a1111.endpoints import RefreshKind
from worker.errors import InputInvalid, RegistryError, WorkerError
from worker.model_job_types import ModelJobRequest, ModelJobs, ProgressReport, PullAction, SyncAction
from worker.preflight.lookup import REFRESH_KIND
from worker.redaction import mask_secrets, public_url

log = logging.getLogger(__name__)

OFF = (
    "registry jobs are off on this worker: they write to the models volume, so the deployment must allow "
    "them with WORKER_ALLOW_MODEL_JOBS=true in the endpoint's environment"
)


class EngineRescan(Protocol):
    """The part of ``worker.a1111.client.A1111Client`` a registry job needs: a folder rescan."""

    def refresh(self, kind: RefreshKind) -> None: ...


def run_model_job(
    request: ModelJobRequest,
    jobs: ModelJobs | None,
    engine: EngineRescan,
    *,
    allowed: bool,
    report: ProgressReport,
    cancelled: Callable[[], bool],
    secrets: list[str],
    models_dir: Path,
) -> dict[str, Any]:
    """The job's output: ``{"registry": {...}, "refreshed": [...], "warnings": [...]}`` (plus the peer's
    own fields for its envelope forms)."""
    if not allowed:
        raise InputInvalid(OFF)
    if jobs is None:
        raise RegistryError("this worker runs without a model registry, so it cannot run registry jobs")
    action = request.action
    hidden = [*secrets]
    if isinstance(action, SyncAction) and action.hf_token is not None:
        hidden.append(action.hf_token.get_secret_value())
    try:
        outcome = jobs.run(action, report=report, cancelled=cancelled)
    except WorkerError as exc:
        raise type(exc)(mask_secrets(exc.message, hidden)) from None
    warnings = list(outcome.warnings)
    refreshed = []
    for kind in outcome.changed:
        try:
            engine.refresh(REFRESH_KIND[kind])
            refreshed.append(REFRESH_KIND[kind])
        except WorkerError as exc:  # the files are in place; a later job's miss rescans again
            warnings.append(
                f"the engine could not rescan its {kind} folder ({exc}); a job naming it will retry"
            )
    output: dict[str, Any] = {"registry": outcome.output, "refreshed": refreshed, "warnings": warnings}
    if request.form == "envelope":
        output.update(_peer_fields(action, outcome.output, models_dir))
    if not any(hidden):
        return output
    masked: dict[str, Any] = json.loads(mask_secrets(json.dumps(output), hidden))
    return masked


def _peer_fields(action: Any, result: dict[str, Any], models_dir: Path) -> dict[str, Any]:
    """The fields the network-volume worker's ``/v1/download`` and ``/v1/sync`` answered with."""
    if isinstance(action, PullAction):
        return {
            "msg": "Download successful",
            "source_url": public_url(action.ref),
            "download_path": action.dest,
        }
    return {
        "synced_count": len(result.get("downloaded", [])),
        "synced_files": [str(models_dir / path) for path in result.get("downloaded", [])],
    }
