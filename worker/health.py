"""Health reports for ``GET /worker/v1/health``: is the engine starting, loading, ready or failed?

A1111 has no readiness endpoint (it listens before its checkpoint is loaded), so each engine gets the
probe that can tell: the embedded engine reads its own state in-process (``probe_embedded``); anything
else is asked over HTTP (``probe_client``), which can only see whether a checkpoint is selected. The
A1111 extension has its own in-process probe (``webui_extensions/worker-routes``).

The report itself is defined once, in the extension's ``a1111_worker_routes.report`` (standard library
only, so it runs in A1111's Python too): every probe builds it with ``health_report``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from a1111_worker_routes.report import HealthStatus, health_report, queue_from_state, torch_vram, vram_mb

from worker.a1111.client import A1111Client
from worker.errors import EngineUnavailable, WorkerError

log = logging.getLogger(__name__)


def _vram_from_memory(memory: Any) -> dict[str, Any] | None:
    """A1111 ``/memory``: ``cuda.system`` holds bytes, or ``cuda.error`` on CPU."""
    cuda = memory.get("cuda") if isinstance(memory, dict) else None
    system = cuda.get("system") if isinstance(cuda, dict) else None
    if not isinstance(system, dict) or "total" not in system:
        return None
    try:
        return vram_mb(int(system["free"]), int(system["total"]))
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
    queue = queue_from_state(getattr(engine, "state", None))
    if model is not None:
        return health_report("ready", checkpoint=checkpoint, vram=torch_vram(), queue=queue)
    if error:
        return health_report("failed", str(error), checkpoint=checkpoint, vram=torch_vram(), queue=queue)
    return health_report("loading", "loading the default checkpoint", vram=torch_vram(), queue=queue)
