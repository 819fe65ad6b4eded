"""pytest plugin: the embedded diffusers engine as a real subprocess, with tiny demo models.

Fixtures (session-scoped):
- ``engine_models_dir``: a tmp folder with checkpoints/ (tiny SD1.5 + tiny SDXL), loras/, embeddings/, vae/.
- ``embedded_engine``: ``python -m diffusers_server serve`` on a free loopback port; yields an object with
  ``.url`` ("http://127.0.0.1:PORT"), ``.models_dir`` and ``.process``; stopped at the end of the session.
Both skip when the engine's dependencies (torch, diffusers) are not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.polling import poll_until

STARTUP_DEADLINE_S = 90.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class EmbeddedEngine:
    url: str
    models_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path


def _require_engine() -> None:
    for module in ("torch", "diffusers", "fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"embedded engine needs {module}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def engine_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_engine()
    from diffusers_server.demo_models import make_demo_models

    root = tmp_path_factory.mktemp("engine-models")
    make_demo_models(root, sdxl=True)
    return root


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    import httpx

    def ready() -> bool | None:
        if process.poll() is not None:
            raise RuntimeError(f"engine exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            # the port opens before torch is imported; the first model load (or its failure) comes after
            status = httpx.get(f"{url}/worker/v1/health", timeout=2).json().get("status")
        except (httpx.HTTPError, ValueError):
            return None
        return status in ("ready", "failed") or None

    try:
        poll_until(
            ready, "the embedded engine's first model load", timeout_s=STARTUP_DEADLINE_S, interval_s=0.2
        )
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}:\n{log_path.read_text()[-4000:]}") from None


@contextlib.contextmanager
def run_engine(models_dir: Path, log_path: Path, *extra: str) -> Iterator[EmbeddedEngine]:
    """``python -m diffusers_server serve`` on ``models_dir`` and a free port, stopped on exit."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "diffusers_server",
        "serve",
        "--models-dir",
        str(models_dir),
        "--port",
        str(port),
        "--threads",
        "1",
        "--cpu",
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        _wait_ready(url, process, log_path)
        yield EmbeddedEngine(url=url, models_dir=models_dir, process=process, log_path=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def embedded_engine(
    engine_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedEngine]:
    log_path = tmp_path_factory.mktemp("engine-log") / "engine.log"
    with run_engine(engine_models_dir, log_path, "--ckpt", "demo-sd15-tiny") as engine:
        yield engine
