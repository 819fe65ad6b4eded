"""``create_app``: the FastAPI application, A1111's error shapes and the hooks for extra routes."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import __version__
from .config import ServerConfig
from .engine import Engine, start_background_load
from .errors import RequestRefused
from .routes import router

log = logging.getLogger(__name__)

AppHook = Callable[[FastAPI], None]


def _a1111_error(status: int, error: str, detail: str, errors: str) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": error, "detail": detail, "body": "", "errors": errors}
    )


def _short(value: object, limit: int = 80) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python prints
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def create_app(
    config: ServerConfig,
    extra_routers: Sequence[APIRouter] = (),
    on_app_started: Sequence[AppHook] = (),
    engine: Engine | None = None,
    load_model: bool = True,
) -> FastAPI:
    """Build the app. Other packages add routes via ``extra_routers`` or ``on_app_started`` callbacks
    (like A1111's ``script_callbacks.on_app_started``); ``app.state.engine`` is the :class:`Engine`."""
    app = FastAPI(title="diffusers_server (A1111-compatible)", version=__version__)
    app.state.engine = engine or Engine(config)

    @app.exception_handler(RequestRefused)
    async def refused(_request: Request, exc: RequestRefused) -> JSONResponse:
        log.info("request refused (%d): %s", exc.status, exc.message)
        return _a1111_error(exc.status, "HTTPException", exc.message, f"{exc.status}: {exc.message}")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 body, with each offending input as a short text: a NaN or a 1 MB string must not turn
        # the answer into a 500 or a megabyte of echo.
        detail = [
            {
                "loc": list(err.get("loc", ())),
                "msg": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "value_error")),
                "input": _short(err.get("input")),
            }
            for err in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _a1111_error(500, type(exc).__name__, "", str(exc))

    @app.middleware("http")
    async def process_time(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Process-Time"] = f"{time.perf_counter() - started:.4f}"
        return response

    app.include_router(router)
    for extra in extra_routers:
        app.include_router(extra)
    for hook in on_app_started:
        hook(app)
    if load_model:
        start_background_load(app.state.engine)
    return app
