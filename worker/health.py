"""Health reports for ``GET /worker/v1/health``: is the engine starting, loading, ready or failed?

A1111 has no readiness endpoint (it listens before its checkpoint is loaded), so each engine gets the
probe that can tell: the embedded engine reads its own state in-process (``probe_embedded``); anything
else is asked over HTTP (``probe_client``), which can only see whether a checkpoint is selected. The
A1111 extension has its own in-process probe (``webui_extensions/worker-routes``) with the same shape.

Report shape: ``{"status", "reason", "checkpoint", "vram", "queue"}``; HTTP 200 only when ``ready``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Literal

from worker.a1111.client import A1111Client
from worker.errors import EngineUnavailable, WorkerError

log = logging.getLogger(__name__)

HealthStatus = Literal["starting", "loading", "ready", "failed"]
HEALTH_STATUSES: tuple[HealthStatus, ...] = ("starting", "loading", "ready", "failed")


def health_report(
    status: HealthStatus,
    reason: str | None = None,
    *,
    checkpoint: str | None = None,
    vram: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"status": status, "reason": reason, "checkpoint": checkpoint, "vram": vram, "queue": queue}


def http_status(report: dict[str, Any]) -> int:
    """200 when ready, else 503, so load balancers and ``HEALTHCHECK`` need not parse the body."""
    return 200 if report.get("status") == "ready" else 503


def torch_vram() -> dict[str, Any] | None:
    """CUDA memory of device 0 when torch is already loaded in this process (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
    except Exception:  # a broken driver must not break the health route
        log.debug("could not read CUDA memory", exc_info=True)
        return None
    mib = 1024 * 1024
    return {"free_mb": free // mib, "used_mb": (total - free) // mib, "total_mb": total // mib}


def _vram_from_memory(memory: Any) -> dict[str, Any] | None:
    """A1111 ``/memory``: ``cuda.system`` holds bytes, or ``cuda.error`` on CPU."""
    cuda = memory.get("cuda") if isinstance(memory, dict) else None
    system = cuda.get("system") if isinstance(cuda, dict) else None
    if not isinstance(system, dict) or "total" not in system:
        return None
    mib = 1024 * 1024
    try:
        return {
            "free_mb": int(system["free"]) // mib,
            "used_mb": int(system["used"]) // mib,
            "total_mb": int(system["total"]) // mib,
        }
    except (KeyError, TypeError, ValueError):
        return None


def probe_client(client: A1111Client, *, loaded: Callable[[], bool | None] | None = None) -> dict[str, Any]:
    """Health of an engine reached over HTTP.

    Args:
        client: the engine client (its pid file makes a dead engine ``failed`` at once).
        loaded: optional knowledge the API cannot give (e.g. the worker finished its warm-up):
            True → ready, False → loading, None → ready once a checkpoint is selected.
    """
    if not client.is_engine_alive():
        return health_report("failed", "the engine process exited")
    try:
        options = client.call_listing("options")
    except EngineUnavailable as exc:
        return health_report("starting", exc.message)
    except WorkerError as exc:
        return health_report("failed", exc.message)
    checkpoint = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
    queue: dict[str, Any] | None
    try:
        progress = client.progress()
        queue = {"running": progress.active, "step": progress.step, "steps": progress.total}
    except WorkerError:
        queue = None
    try:
        vram = _vram_from_memory(client.call_listing("memory"))
    except WorkerError:
        vram = None
    known = loaded() if loaded is not None else None
    ready = known if known is not None else bool(checkpoint)
    status: HealthStatus = "ready" if ready else "loading"
    reason = None if ready else "no checkpoint loaded yet"
    return health_report(status, reason, checkpoint=checkpoint or None, vram=vram, queue=queue)


def probe_embedded(engine: Any) -> dict[str, Any]:
    """Health of the embedded engine from its own state (``diffusers_server.engine.Engine``, duck-typed)."""
    model = getattr(engine, "model", None)
    error = getattr(engine, "load_error", None)
    info = getattr(engine, "model_info", None)
    options = getattr(engine, "options", {}) or {}
    checkpoint = getattr(info, "title", None) or options.get("sd_model_checkpoint") or None
    state = getattr(engine, "state", None)
    queue = None
    if state is not None:
        queue = {
            "running": bool(getattr(state, "job", "")) or int(getattr(state, "job_count", 0) or 0) != 0,
            "step": int(getattr(state, "sampling_step", 0) or 0),
            "steps": int(getattr(state, "sampling_steps", 0) or 0),
        }
    if model is not None:
        return health_report("ready", checkpoint=checkpoint, vram=torch_vram(), queue=queue)
    if error:
        return health_report("failed", str(error), checkpoint=checkpoint, vram=torch_vram(), queue=queue)
    return health_report("loading", "loading the default checkpoint", vram=torch_vram(), queue=queue)
