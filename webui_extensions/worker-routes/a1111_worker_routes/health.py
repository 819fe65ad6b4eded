"""Readiness from A1111's in-process state, which its HTTP API does not expose (a1111-api.md §1).

A1111 listens before its checkpoint is loaded: the load runs in a background thread holding
``sd_models.model_data.lock``. So: lock held → loading; a model object → ready; no model and no
checkpoint file → failed; no model after a grace period with the lock free → the load failed.
"""

from __future__ import annotations

import sys
import time
from typing import Any

#: Seconds after app start during which "no model, lock free" still means the load thread is starting.
LOAD_GRACE_S = 15.0


def _report(
    status: str,
    reason: str | None,
    checkpoint: str | None,
    vram: dict[str, Any] | None,
    queue: dict[str, Any] | None,
) -> dict[str, Any]:
    return {"status": status, "reason": reason, "checkpoint": checkpoint, "vram": vram, "queue": queue}


def torch_vram() -> dict[str, Any] | None:
    """CUDA memory of the current device, when torch is loaded (it always is inside A1111)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
    except Exception:
        return None
    mib = 1024 * 1024
    return {"free_mb": free // mib, "used_mb": (total - free) // mib, "total_mb": total // mib}


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
    queue = None
    if state is not None:
        queue = {
            "running": bool(getattr(state, "job", "")) or int(getattr(state, "job_count", 0) or 0) != 0,
            "step": int(getattr(state, "sampling_step", 0) or 0),
            "steps": int(getattr(state, "sampling_steps", 0) or 0),
        }
    info = getattr(model, "sd_checkpoint_info", None)
    loaded = getattr(info, "title", None)
    if model is not None:
        return _report("ready", None, loaded or selected, vram, queue)
    if loading:
        return _report("loading", f"loading checkpoint {selected or '(default)'}", selected, vram, queue)
    if checkpoints_known == 0:
        return _report(
            "failed",
            "no checkpoint in --ckpt-dir: put one on the volume (python -m worker registry pull <id>)",
            None,
            vram,
            queue,
        )
    if lazy_load:
        return _report("ready", "the checkpoint loads on the first request", selected, vram, queue)
    if seconds_since_start < LOAD_GRACE_S:
        return _report("loading", "checkpoint load starting", selected, vram, queue)
    return _report(
        "failed", "the checkpoint failed to load; see the [engine] log lines", selected, vram, queue
    )


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
