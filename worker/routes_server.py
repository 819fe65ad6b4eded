"""``python -m worker.routes_server``: serve ``/worker/v1`` next to A1111 (``WORKER_MODE=api``).

A1111 1.10 pins fastapi 0.94 / pydantic 1 and the worker needs pydantic 2, so the worker cannot run
inside A1111's process. This small server runs in the worker's own Python on loopback; the A1111
extension (webui_extensions/worker-routes) forwards ``/worker/v1/models`` and ``/worker/v1/txt2img``
to it, so users on :3000 get the same job path as RunPod jobs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from worker.handler import JobRunner
from worker.logs import settings_with_logging
from worker.routes import create_worker_router

log = logging.getLogger("worker.routes_server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.routes_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args(argv)
    settings = settings_with_logging()
    if settings is None:
        return 2

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI(title="a1111-runpod-worker routes")
    app.include_router(create_worker_router(lambda: JobRunner.from_settings(settings)))
    log.info("serving /worker/v1 on %s:%d for the A1111 extension", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
