"""Register ``/worker/v1`` on A1111's FastAPI app.

``/health`` is answered here from A1111's state and stays open (it carries no secret; load balancers
and Docker's HEALTHCHECK poll it). ``/models`` and ``/txt2img`` go to the worker routes server and,
since A1111's ``--api-auth`` does not cover extension routes (tests/a1111/test_start_sh.py), check the same
credentials themselves.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from a1111_worker_routes.proxy import forward
from a1111_worker_routes.report import http_status

PREFIX = "/worker/v1"


def _authorised(header: str | None, api_auth: str | None) -> bool:
    """A1111's ``--api-auth user:pass[,user2:pass2]`` checked against an HTTP Basic header."""
    if not api_auth:
        return True
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    pairs = [pair.strip() for pair in api_auth.split(",") if pair.strip()]
    return any(secrets.compare_digest(given.encode(), pair.encode()) for pair in pairs)


def register_routes(
    app: FastAPI,
    *,
    health: Callable[[], dict[str, Any]],
    routes_url: str,
    api_auth: str | None = None,
    timeout_s: float = 900.0,
) -> None:
    """Add the routes to ``app`` (A1111 calls this from ``on_app_started``)."""
    base = routes_url.rstrip("/") + PREFIX

    def denied() -> Response:
        return JSONResponse(
            {"error": "input_invalid: authentication required (the engine's --api-auth credentials)"},
            status_code=401,
            headers={"WWW-Authenticate": "Basic"},
        )

    def get_health() -> JSONResponse:
        report = health()
        return JSONResponse(report, status_code=http_status(report))

    async def get_models(request: Request) -> Response:
        if not _authorised(request.headers.get("authorization"), api_auth):
            return denied()
        status, body = await run_in_threadpool(forward, "GET", base + "/models", None, timeout_s=30.0)
        return Response(body, status_code=status, media_type="application/json")

    async def post_txt2img(request: Request) -> Response:
        if not _authorised(request.headers.get("authorization"), api_auth):
            return denied()
        payload = await request.body()
        # The wait happens in a worker thread: the event loop keeps serving A1111's own /sdapi/v1
        # routes, which the worker calls back over loopback to run the job.
        status, body = await run_in_threadpool(
            forward, "POST", base + "/txt2img", payload, timeout_s=timeout_s
        )
        return Response(body, status_code=status, media_type="application/json")

    app.add_api_route(PREFIX + "/health", get_health, methods=["GET"], tags=["worker"])
    app.add_api_route(PREFIX + "/models", get_models, methods=["GET"], tags=["worker"])
    app.add_api_route(PREFIX + "/txt2img", post_txt2img, methods=["POST"], tags=["worker"])
