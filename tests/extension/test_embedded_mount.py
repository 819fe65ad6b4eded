"""The same routes mounted into the embedded engine (no A1111 installed): real diffusion, tiny models."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.extension.support import TINY_JOB, serve
from worker.routes import embedded_engine_hook

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_routes_in_the_embedded_engine(tmp_path: Path) -> None:
    try:
        from diffusers_server.app import create_app
        from diffusers_server.config import ServerConfig
    except ImportError as exc:  # the engine extra is part of `make setup`; say what is missing
        pytest.fail(f"the embedded engine is not importable ({exc}); run `make setup`")
    models = tmp_path / "models"
    subprocess.run([sys.executable, "-m", "diffusers_server", "make-demo-models", str(models)], check=True)
    from tests.extension.support import free_port

    port = free_port()
    app = create_app(
        ServerConfig(models_dir=models, port=port, force_cpu=True, threads=1),
        on_app_started=[embedded_engine_hook],
    )
    with serve(app, port) as url, httpx.Client(base_url=url, timeout=120) as client:
        deadline = time.monotonic() + 90
        while (health := client.get("/worker/v1/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline, health.text
            time.sleep(0.2)
        assert health.status_code == 200, health.text
        assert health.json()["checkpoint"].startswith("demo-sd15-tiny")
        response = client.post("/worker/v1/txt2img", json=TINY_JOB)
        assert response.status_code == 200, response.text
        assert len(response.json()["images"]) == 1
        missing = client.post("/worker/v1/txt2img", json={**TINY_JOB, "checkpoint": "nope"})
        assert missing.status_code == 404, missing.text
        listing = client.get("/worker/v1/models").json()["models"]
        assert any(m["file_name"] == "demo-sd15-tiny.safetensors" and m["available"] for m in listing)
