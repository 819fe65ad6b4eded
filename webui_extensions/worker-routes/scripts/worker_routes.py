"""A1111 glue: register the ``/worker/v1`` routes when the app starts (logic in ``a1111_worker_routes``)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from a1111_worker_routes import health_from_modules, register_routes
from modules import script_callbacks, sd_models, shared

log = logging.getLogger("worker_routes")
_STARTED_AT = time.monotonic()


def _on_app_started(_demo: Any, app: Any) -> None:
    # Read here, in A1111's process: the worker's settings module is not importable in A1111's Python.
    routes_url = os.environ.get("WORKER_ROUTES_URL") or "http://127.0.0.1:3001"
    register_routes(
        app,
        health=lambda: health_from_modules(shared, sd_models, _STARTED_AT),
        routes_url=routes_url,
        api_auth=getattr(shared.cmd_opts, "api_auth", None),
    )
    log.info("worker routes registered under /worker/v1 (jobs forwarded to %s)", routes_url)


script_callbacks.on_app_started(_on_app_started)
