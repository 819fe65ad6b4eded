"""The health report of ``GET /worker/v1/health``: its one definition, shared by every probe.

Plain dicts and the standard library only: this module runs inside A1111's Python (pydantic 1) for the
extension, and the worker (``worker.health``) imports the same file for its own probes, so both answer the
same shape: ``{"status", "reason", "checkpoint", "vram", "queue"}``, HTTP 200 only when ``ready``.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

HealthStatus = Literal["starting", "loading", "ready", "failed"]
HEALTH_STATUSES: tuple[HealthStatus, ...] = ("starting", "loading", "ready", "failed")
REPORT_KEYS: tuple[str, ...] = ("status", "reason", "checkpoint", "vram", "queue")
QUEUE_KEYS: tuple[str, ...] = ("running", "step", "steps")
VRAM_KEYS: tuple[str, ...] = ("free_mb", "used_mb", "total_mb")

_MIB = 1024 * 1024


def health_report(
    status: HealthStatus,
    reason: str | None = None,
    *,
    checkpoint: str | None = None,
    vram: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if status not in HEALTH_STATUSES:
        raise ValueError(f"health status {status!r} is not one of {', '.join(HEALTH_STATUSES)}")
    return {"status": status, "reason": reason, "checkpoint": checkpoint, "vram": vram, "queue": queue}


def http_status(report: dict[str, Any]) -> int:
    """200 when ready, else 503, so load balancers and ``HEALTHCHECK`` need not parse the body."""
    return 200 if report.get("status") == "ready" else 503


def queue_from_state(state: Any) -> dict[str, Any] | None:
    """``{"running", "step", "steps"}`` from an A1111-style ``shared.state`` (duck-typed), if any."""
    if state is None:
        return None
    return {
        "running": bool(getattr(state, "job", "")) or int(getattr(state, "job_count", 0) or 0) != 0,
        "step": int(getattr(state, "sampling_step", 0) or 0),
        "steps": int(getattr(state, "sampling_steps", 0) or 0),
    }


def vram_mb(free: int, total: int) -> dict[str, Any]:
    return {"free_mb": free // _MIB, "used_mb": (total - free) // _MIB, "total_mb": total // _MIB}


def torch_vram() -> dict[str, Any] | None:
    """CUDA memory of the current device when torch is already loaded in this process (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
    except Exception:  # a broken driver must not break the health route
        return None
    return vram_mb(int(free), int(total))
