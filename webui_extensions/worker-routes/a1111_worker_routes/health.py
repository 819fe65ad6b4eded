"""Readiness from A1111's in-process state, which its HTTP API does not expose (it listens before loading).

A1111 listens before its checkpoint is loaded: the load runs in a background thread holding
``sd_models.model_data.lock``. So: lock held → loading; a model object → ready; no model and no
checkpoint file → failed; no model after a grace period with the lock free → the load failed.
"""

from __future__ import annotations

import time
from typing import Any

from a1111_worker_routes.report import HealthStatus, health_report, queue_from_state, torch_vram

#: Seconds after app start during which "no model, lock free" still means the load thread is starting.
LOAD_GRACE_S = 15.0


def a1111_health(
    *,
    model: Any,
    loading: bool,
    checkpoints_known: int,
    selected: str | None,
    state: Any,
    seconds_since_start: float,
    lazy_load: bool = False,
    vram: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The health report from plain values (``health_from_modules`` reads them from A1111)."""
    queue = queue_from_state(state)
    info = getattr(model, "sd_checkpoint_info", None)
    loaded = getattr(info, "title", None)
    if model is not None:
        return health_report("ready", checkpoint=loaded or selected, vram=vram, queue=queue)
    if checkpoints_known == 0 and not loading:
        reason = "no checkpoint in --ckpt-dir: put one on the volume (python -m worker registry pull <id>)"
        return health_report("failed", reason, vram=vram, queue=queue)
    status: HealthStatus
    if loading:
        status, reason = "loading", f"loading checkpoint {selected or '(default)'}"
    elif lazy_load:
        status, reason = "ready", "the checkpoint loads on the first request"
    elif seconds_since_start < LOAD_GRACE_S:
        status, reason = "loading", "checkpoint load starting"
    else:
        status, reason = "failed", "the checkpoint failed to load; see the [engine] log lines"
    return health_report(status, reason, checkpoint=selected, vram=vram, queue=queue)


def health_from_modules(shared: Any, sd_models: Any, started_at: float) -> dict[str, Any]:
    """Read A1111 1.10's ``modules.shared`` and ``modules.sd_models`` (duck-typed, never raises)."""
    model_data = getattr(sd_models, "model_data", None)
    lock = getattr(model_data, "lock", None)
    locked = getattr(lock, "locked", None)
    cmd_opts = getattr(shared, "cmd_opts", None)
    opts = getattr(shared, "opts", None)
    return a1111_health(
        model=getattr(model_data, "sd_model", None),
        loading=bool(locked()) if callable(locked) else False,
        checkpoints_known=len(getattr(sd_models, "checkpoints_list", {}) or {}),
        selected=getattr(opts, "sd_model_checkpoint", None) or None,
        state=getattr(shared, "state", None),
        seconds_since_start=time.monotonic() - started_at,
        lazy_load=bool(getattr(cmd_opts, "skip_load_model_at_start", False)),
        vram=torch_vram(),
    )
