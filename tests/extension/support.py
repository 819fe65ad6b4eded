"""Helpers for the route tests: a JobRunner on any engine URL, and a real uvicorn server in a thread."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry import ModelRegistry
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_DIR = ROOT / "webui_extensions" / "worker-routes"

# A1111 puts each extension's folder on sys.path; do the same so ``a1111_worker_routes`` imports.
if str(EXTENSION_DIR) not in sys.path:
    sys.path.insert(0, str(EXTENSION_DIR))

TINY_JOB: dict[str, Any] = {"prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64, "seed": 7}


def make_runner(url: str, models_dir: Path, *, with_registry: bool = True) -> JobRunner:
    settings = WorkerSettings(a1111_url=url, models_dir=models_dir, request_timeout_s=10, job_timeout_s=120)  # type: ignore[arg-type]
    provider = ModelRegistry.from_settings(settings) if with_registry else None
    return JobRunner(settings, A1111Client(url, request_timeout_s=10), provider=provider)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a loopback port in a thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
