"""``create_worker_router`` on a bare FastAPI app, with the real JobRunner against the fake A1111."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.extension.support import TINY_JOB, make_runner
from tests.support.fake_a1111 import OOM_BODY, FakeA1111
from worker.errors import ErrorCode
from worker.routes import ERROR_HTTP_STATUS, create_worker_router, status_for_output


@pytest.fixture
def client(fake_a1111: FakeA1111, tmp_path: Path) -> TestClient:
    runner = make_runner(fake_a1111.url, tmp_path / "models")
    app = FastAPI()
    app.include_router(create_worker_router(lambda: runner))
    return TestClient(app)


def test_every_error_code_has_an_http_status() -> None:
    assert set(ERROR_HTTP_STATUS) == {code.value for code in ErrorCode}
    assert status_for_output({"images": []}) == 200
    assert status_for_output({"error": "model_incompatible: SDXL LoRA on SD1.5"}) == 409
    assert status_for_output({"error": "cancelled: stopped"}) == 499
    assert status_for_output({"error": "something odd"}) == 500


def test_health_is_ready_when_the_engine_answers(client: TestClient) -> None:
    response = client.get("/worker/v1/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body) == {"status", "reason", "checkpoint", "vram", "queue"}
    assert body["checkpoint"]
    assert body["queue"]["running"] is False


def test_txt2img_runs_the_job_path(client: TestClient, fake_a1111: FakeA1111) -> None:
    response = client.post("/worker/v1/txt2img", json=TINY_JOB)
    assert response.status_code == 200, response.text
    out = response.json()
    assert len(out["images"]) == 1 and out["seeds"] and "timings_ms" in out
    assert len(fake_a1111.requests_to("txt2img")) == 1


def test_txt2img_accepts_the_runpod_envelope(client: TestClient) -> None:
    response = client.post("/worker/v1/txt2img", json={"id": "abc", "input": TINY_JOB})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("job", "status", "code"),
    [
        ({**TINY_JOB, "steps": "many"}, 422, "input_invalid"),
        ({**TINY_JOB, "no_such_field": 1}, 422, "input_invalid"),
        ({**TINY_JOB, "checkpoint": "does-not-exist"}, 404, "model_not_found"),
    ],
)
def test_user_errors_map_to_4xx(client: TestClient, job: dict[str, object], status: int, code: str) -> None:
    response = client.post("/worker/v1/txt2img", json=job)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(code + ":")


def test_out_of_memory_is_507(client: TestClient, fake_a1111: FakeA1111) -> None:
    fake_a1111.set_fault("txt2img", status=500, body=OOM_BODY)
    response = client.post("/worker/v1/txt2img", json=TINY_JOB)
    assert response.status_code == 507, response.text
    assert response.json()["refresh_worker"] is True


def test_dead_engine_is_503_and_health_says_starting(client: TestClient, fake_a1111: FakeA1111) -> None:
    fake_a1111.stop()
    response = client.post("/worker/v1/txt2img", json=TINY_JOB)
    assert response.status_code == 503, response.text
    assert response.json()["error"].startswith("engine_unavailable:")
    health = client.get("/worker/v1/health")
    assert health.status_code == 503
    assert health.json()["status"] == "starting"


def test_models_lists_the_catalogue_with_availability(client: TestClient) -> None:
    response = client.get("/worker/v1/models")
    assert response.status_code == 200, response.text
    models = response.json()["models"]
    assert models, "the shipped catalogue should list models"
    assert all(m["available"] is False for m in models)  # an empty volume
    assert {"kind", "id", "file_name", "available", "sha256"} <= set(models[0])


def test_models_without_registry_is_404(fake_a1111: FakeA1111, tmp_path: Path) -> None:
    runner = make_runner(fake_a1111.url, tmp_path, with_registry=False)
    app = FastAPI()
    app.include_router(create_worker_router(lambda: runner))
    response = TestClient(app).get("/worker/v1/models")
    assert response.status_code == 404
