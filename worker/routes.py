"""The product's own HTTP routes (``/worker/v1/...``) for direct-REST users, on any FastAPI app.

``create_worker_router`` is mounted three ways, always running the same ``JobRunner.run`` as a
RunPod job (never a copy of the job path):

* into the embedded engine's app (``embedded_engine_hook``, passed to ``create_app(on_app_started=...)``);
* by ``python -m worker.routes_server``, which A1111's extension forwards to (A1111 pins pydantic 1 and
  cannot import the worker; see webui_extensions/worker-routes);
* onto a bare FastAPI app in tests.

The job route is a sync ``def``: FastAPI runs it in its threadpool, so the runner's loopback HTTP call
to an engine living in the same process (the embedded engine) cannot deadlock the event loop.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from a1111_worker_routes.report import health_report, http_status
from fastapi import APIRouter, Body, FastAPI
from fastapi.responses import JSONResponse

from worker.errors import ErrorCode, WorkerError
from worker.handler import JobRunner, error_output
from worker.health import probe_client, probe_embedded

log = logging.getLogger(__name__)

PREFIX = "/worker/v1"

#: Error code → HTTP status of the job route (docs/api.md). 499 is nginx's "client closed request".
ERROR_HTTP_STATUS: dict[str, int] = {
    ErrorCode.INPUT_INVALID.value: 422,
    ErrorCode.MODEL_NOT_FOUND.value: 404,
    ErrorCode.MODEL_INCOMPATIBLE.value: 409,
    ErrorCode.DOWNLOAD_FAILED.value: 502,
    ErrorCode.ENGINE_UNAVAILABLE.value: 503,
    ErrorCode.OUT_OF_MEMORY.value: 507,
    ErrorCode.TIMEOUT.value: 504,
    ErrorCode.OUTPUT_TOO_LARGE.value: 413,
    ErrorCode.UPLOAD_FAILED.value: 502,
    ErrorCode.CANCELLED.value: 499,
    ErrorCode.ENGINE_ERROR.value: 500,
    ErrorCode.REGISTRY_ERROR.value: 500,
}

RunnerFactory = Callable[[], JobRunner]
Report = Callable[[], dict[str, Any]]


def status_for_output(output: Any) -> int:
    """The HTTP status of a job result: 200, or the status of its ``"<code>: ..."`` error."""
    if not isinstance(output, dict) or "error" not in output:
        return 200
    code = str(output["error"]).split(":", 1)[0].strip()
    return ERROR_HTTP_STATUS.get(code, 500)


def registry_listing(provider: Any) -> dict[str, Any]:
    """The registry with availability: files on the volume, then catalogue entries not downloaded yet."""
    if provider is None or not hasattr(provider, "entries") or not hasattr(provider, "catalogue"):
        raise LookupError("this worker has no model registry configured")
    models: list[dict[str, Any]] = []
    present_ids: set[str] = set()
    for entry in provider.entries():
        if entry.registry_id:
            present_ids.add(entry.registry_id)
        models.append(
            {
                "kind": entry.kind,
                "id": entry.registry_id,
                "file_name": entry.file_name,
                "available": bool(entry.usable),
                "problem": entry.problem,
                "architecture": entry.architecture,
                "sha256": entry.sha256,
                "short_hash": entry.short_hash,
                "size": entry.size,
            }
        )
    for item in provider.catalogue.models:
        if item.id in present_ids:
            continue
        models.append(
            {
                "kind": item.kind,
                "id": item.id,
                "file_name": item.file_name,
                "available": False,
                "problem": "not on the volume; downloaded on first use",
                "architecture": item.architecture,
                "sha256": item.sha256,
                "short_hash": item.sha256[:10] if item.sha256 else None,
                "size": item.size,
                "source": item.source.type,
            }
        )
    return {"models": models}


def create_worker_router(
    runner_factory: RunnerFactory,
    *,
    health: Report | None = None,
    models: Report | None = None,
    prefix: str = PREFIX,
) -> APIRouter:
    """Build the ``/worker/v1`` router.

    Args:
        runner_factory: builds the process's ``JobRunner`` (called once, on first use).
        health: the health probe (default: ``probe_client`` on the runner's engine).
        models: the registry listing (default: ``registry_listing`` of the runner's provider).
    """
    lock = threading.Lock()
    built: list[JobRunner] = []

    def runner() -> JobRunner:
        with lock:
            if not built:
                built.append(runner_factory())
            return built[0]

    router = APIRouter(prefix=prefix, tags=["worker"])

    @router.get("/health")
    def get_health() -> JSONResponse:
        try:
            report = health() if health is not None else probe_client(runner().engine)
        except Exception as exc:  # the health route itself must always answer
            log.exception("health probe failed")
            report = health_report("failed", f"health probe failed ({type(exc).__name__})")
        return JSONResponse(report, status_code=http_status(report))

    @router.get("/models")
    def get_models() -> JSONResponse:
        try:
            listing = models() if models is not None else registry_listing(runner().provider)
        except LookupError as exc:
            return JSONResponse({"error": f"model_not_found: {exc}"}, status_code=404)
        except WorkerError as exc:
            output = error_output(exc)
            return JSONResponse(output, status_code=status_for_output(output))
        return JSONResponse(listing)

    @router.post("/txt2img")
    def txt2img(body: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008 - FastAPI's idiom
        # Either a RunPod-style {"input": {...}} or the job input itself.
        is_envelope = isinstance(body.get("input"), dict) and set(body) <= {"id", "input"}
        job = body if is_envelope else {"input": body}
        job = {"id": str(job.get("id") or f"rest-{uuid.uuid4().hex[:12]}"), "input": job["input"]}
        try:
            job_runner = runner()
        except WorkerError as exc:
            output = error_output(exc)
            return JSONResponse(output, status_code=status_for_output(output))
        result = job_runner.run(job)
        return JSONResponse(result, status_code=status_for_output(result))

    return router


def embedded_engine_hook(app: FastAPI) -> None:
    """Mount the routes into the embedded engine (``create_app(..., on_app_started=[this])``).

    The runner calls this very server (its port, not WORKER_A1111_URL) and the registry reads the
    engine's models folder; everything else comes from the environment as for a RunPod worker.
    """
    from pydantic import AnyHttpUrl

    from worker.settings import WorkerSettings

    engine = app.state.engine
    config = engine.config

    def factory() -> JobRunner:
        settings = WorkerSettings.from_env().model_copy(
            update={
                "a1111_url": AnyHttpUrl(f"http://127.0.0.1:{config.port}"),
                "models_dir": config.models_dir,
                "engine_pid_file": None,  # the engine is this process
                "engine": "embedded",
            }
        )
        return JobRunner.from_settings(settings)

    app.include_router(create_worker_router(factory, health=lambda: probe_embedded(engine)))
