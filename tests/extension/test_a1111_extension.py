"""The A1111 extension: in-process health from A1111's state, and job routes forwarded to the worker.

A1111 itself is not installed here: its modules are stood in by plain objects with the attributes
A1111 1.10.1 has (``shared.state``, ``sd_models.model_data.lock``...). The forwarding goes to a real
``worker.routes`` server (uvicorn) whose JobRunner talks to the fake A1111.
"""

from __future__ import annotations

import base64
import importlib
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.extension.support import TINY_JOB, free_port, make_runner, serve
from tests.support.fake_a1111 import FakeA1111
from worker.routes import create_worker_router

from a1111_worker_routes import a1111_health, health_from_modules, register_routes  # isort: skip

STATE = types.SimpleNamespace(job="", job_count=0, sampling_step=0, sampling_steps=0)


def _model(title: str) -> Any:
    return types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(title=title))


def _health(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": None,
        "loading": False,
        "checkpoints_known": 1,
        "selected": "demo.safetensors [0123456789]",
        "state": STATE,
        "seconds_since_start": 60.0,
    }
    args.update(kw)
    return a1111_health(**args)


def test_health_states() -> None:
    assert _health(loading=True)["status"] == "loading"
    ready = _health(model=_model("real.safetensors [abc]"))
    assert ready["status"] == "ready" and ready["checkpoint"] == "real.safetensors [abc]"
    assert ready["queue"] == {"running": False, "step": 0, "steps": 0}
    none = _health(checkpoints_known=0)
    assert none["status"] == "failed" and "--ckpt-dir" in none["reason"]
    assert _health(seconds_since_start=1.0)["status"] == "loading"
    failed = _health()
    assert failed["status"] == "failed" and "[engine]" in failed["reason"]


def test_health_from_a1111_modules() -> None:
    lock = threading.Lock()
    model_data = types.SimpleNamespace(sd_model=None, lock=lock)
    sd_models = types.SimpleNamespace(model_data=model_data, checkpoints_list={"a": 1})
    shared = types.SimpleNamespace(
        state=STATE,
        opts=types.SimpleNamespace(sd_model_checkpoint="a.safetensors"),
        cmd_opts=types.SimpleNamespace(skip_load_model_at_start=False),
    )
    with lock:  # A1111's background load holds the lock
        assert health_from_modules(shared, sd_models, time.monotonic())["status"] == "loading"
    model_data.sd_model = _model("a.safetensors [1234567890]")
    report = health_from_modules(shared, sd_models, time.monotonic())
    assert report["status"] == "ready" and report["checkpoint"] == "a.safetensors [1234567890]"


@pytest.fixture
def routes_server(fake_a1111: FakeA1111, tmp_path: Path) -> Iterator[str]:
    runner = make_runner(fake_a1111.url, tmp_path / "models")
    app = FastAPI()
    app.include_router(create_worker_router(lambda: runner))
    with serve(app) as url:
        yield url


def _a1111_app(routes_url: str, api_auth: str | None = None, status: str = "ready") -> TestClient:
    app = FastAPI()
    report = {"status": status, "reason": None, "checkpoint": "x", "vram": None, "queue": None}
    register_routes(app, health=lambda: report, routes_url=routes_url, api_auth=api_auth)
    return TestClient(app)


def test_health_route_status_codes() -> None:
    assert _a1111_app("http://127.0.0.1:9").get("/worker/v1/health").status_code == 200
    loading = _a1111_app("http://127.0.0.1:9", status="loading").get("/worker/v1/health")
    assert loading.status_code == 503 and loading.json()["status"] == "loading"


def test_txt2img_and_models_are_forwarded_to_the_worker(routes_server: str, fake_a1111: FakeA1111) -> None:
    client = _a1111_app(routes_server)
    response = client.post("/worker/v1/txt2img", json=TINY_JOB)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1
    assert len(fake_a1111.requests_to("txt2img")) == 1
    bad = client.post("/worker/v1/txt2img", json={**TINY_JOB, "checkpoint": "nope"})
    assert bad.status_code == 404 and bad.json()["error"].startswith("model_not_found:")
    assert client.get("/worker/v1/models").status_code == 200


def test_routes_server_down_is_503_with_the_reason() -> None:
    response = _a1111_app(f"http://127.0.0.1:{free_port()}").post("/worker/v1/txt2img", json=TINY_JOB)
    assert response.status_code == 503
    assert "WORKER_MODE=api" in response.json()["error"]


def test_api_auth_protects_job_routes_not_health(routes_server: str) -> None:
    client = _a1111_app(routes_server, api_auth="alice:s3cret,bob:pw")
    assert client.post("/worker/v1/txt2img", json=TINY_JOB).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:nope").decode()}
    assert client.get("/worker/v1/models", headers=wrong).status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"bob:pw").decode()}
    assert client.post("/worker/v1/txt2img", json=TINY_JOB, headers=good).status_code == 200
    assert client.get("/worker/v1/health").status_code == 200


def test_glue_script_registers_on_app_started(monkeypatch: pytest.MonkeyPatch) -> None:
    callbacks: list[Any] = []
    modules = types.ModuleType("modules")
    script_callbacks = types.SimpleNamespace(on_app_started=callbacks.append)
    shared = types.SimpleNamespace(
        state=STATE,
        opts=types.SimpleNamespace(sd_model_checkpoint=None),
        cmd_opts=types.SimpleNamespace(api_auth=None, skip_load_model_at_start=False),
    )
    sd_models = types.SimpleNamespace(
        model_data=types.SimpleNamespace(sd_model=None, lock=threading.Lock()), checkpoints_list={}
    )
    modules.script_callbacks = script_callbacks  # type: ignore[attr-defined]
    modules.shared = shared  # type: ignore[attr-defined]
    modules.sd_models = sd_models  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modules", modules)
    scripts_dir = Path(__file__).resolve().parents[2] / "webui_extensions" / "worker-routes" / "scripts"
    monkeypatch.syspath_prepend(str(scripts_dir))
    sys.modules.pop("worker_routes", None)
    importlib.import_module("worker_routes")
    assert len(callbacks) == 1
    app = FastAPI()
    callbacks[0](None, app)  # A1111 passes demo=None under --nowebui
    health = TestClient(app).get("/worker/v1/health")
    assert health.status_code == 503
    assert health.json()["status"] == "failed"  # no checkpoint at all
    sys.modules.pop("worker_routes", None)
