"""The image as RunPod runs it, checked from outside the container with the small A1111 test models.

``serverless``: the worker behind RunPod's local API in a network namespace with no route anywhere, whose only
listener is a recording proxy (every proxy variable points at it): the HEALTHCHECK turns healthy, a job and a
strict error go through the worker, nothing tries to download, and ``podman stop`` ends everything cleanly.
``exposed``: ``WORKER_MODE=api`` with the engine published on a host port: A1111's and the worker's routes
require the credentials, the health route does not. Each module-scoped container is removed afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.podman import VOLUME, Container, proxy_requests, start_recorded
from tests.support.real_a1111 import free_port

pytestmark = pytest.mark.timeout(3600)  # the first run builds the image

JOB: dict[str, Any] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 1}
AUTH = ("tester", "image-suite-pass")
STOP_TIMEOUT_S = 10  # podman's and Docker's default


@pytest.fixture(scope="module")
def serverless(image: str, tiny_models: Path, recorder: Container) -> Iterator[Container]:
    box = start_recorded(image, tiny_models, recorder)
    try:
        yield box
    finally:
        box.remove()


def test_healthcheck_turns_healthy_once_the_checkpoint_is_loaded(serverless: Container) -> None:
    seen = serverless.wait_healthy(600)
    assert seen[0] is False and seen[-1] is True, seen
    assert serverless.inspect()["State"]["Health"]["Status"] == "healthy"
    status, body = serverless.curl("http://127.0.0.1:3000/worker/v1/health")
    assert status == 200, body
    assert json.loads(body)["checkpoint"].startswith("tiny_a.safetensors"), body


def runsync(box: Container, job: dict[str, Any]) -> dict[str, Any]:
    box.wait_local_api(600)
    status, body = box.curl(
        "http://127.0.0.1:8000/runsync",
        "-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps({"input": job}),
    )  # fmt: skip
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def test_a_serverless_job_runs_through_the_local_api(serverless: Container) -> None:
    serverless.wait_healthy(600)
    done = runsync(serverless, {**JOB, "checkpoint": "tiny_a"})
    assert done["status"] == "COMPLETED", done
    assert len(done["output"]["images"]) == 1 and done["output"]["warnings"] == [], done


def test_an_unknown_checkpoint_is_a_strict_error(serverless: Container) -> None:
    serverless.wait_healthy(600)
    failed = runsync(serverless, {**JOB, "checkpoint": "tiny_c"})
    assert failed["status"] == "FAILED", failed
    assert str(failed["error"]).startswith("model_not_found: checkpoint 'tiny_c' not found"), failed


#: what A1111 does when it builds an SD1.x model (ldm's FrozenCLIPEmbedder); the tiny test checkpoints name their
#: own text encoder folder instead, so the container's start-up alone does not take this path
CLIP_LOAD = (
    "from transformers import CLIPTokenizer, CLIPTextConfig; "
    "CLIPTokenizer.from_pretrained('openai/clip-vit-large-patch14'); "
    "CLIPTextConfig.from_pretrained('openai/clip-vit-large-patch14'); print('loaded')"
)


def test_nothing_is_downloaded_at_start_up(serverless: Container, recorder: Container) -> None:
    serverless.wait_healthy(600)
    assert proxy_requests(recorder) == []


def test_an_sd15_text_encoder_loads_from_the_image_without_the_hub(
    serverless: Container, recorder: Container
) -> None:
    """Found by the first build: without HF_HUB_OFFLINE, every SD1.x load asked huggingface.co (and failed
    behind this proxy although the cache was complete)."""
    serverless.wait_healthy(600)
    loaded = serverless.exec("/opt/a1111/venv/bin/python", "-c", CLIP_LOAD)
    assert loaded.stdout.strip().endswith("loaded"), loaded.stderr[-2000:]
    assert proxy_requests(recorder) == []


def test_the_worker_reads_the_catalogue_the_image_ships(serverless: Container) -> None:
    """Found by the first build: the catalogue's default path is beside a checkout's worker/, which the
    installed package does not have; the image sets WORKER_CATALOGUE_PATH."""
    listed = serverless.exec("/opt/worker-venv/bin/python", "-m", "worker", "registry", "list")
    assert listed.returncode == 0 and "deliberate-v6" in listed.stdout, listed.stderr[-2000:]
    default = serverless.exec(
        "env",
        "-u",
        "WORKER_CATALOGUE_PATH",
        "/opt/worker-venv/bin/python",
        "-m",
        "worker",
        "registry",
        "list",
    )
    assert default.returncode != 0 and "cannot read catalogue" in default.stdout + default.stderr


def test_stop_ends_engine_and_worker_cleanly(serverless: Container) -> None:
    serverless.wait_healthy(600)
    # no ps in the image: the command lines from /proc
    before = serverless.exec("sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "launch.py" in before and "-m worker" in before, before
    begun = time.monotonic()
    status = serverless.stop(STOP_TIMEOUT_S)
    took = time.monotonic() - begun
    log = serverless.logs()
    assert status == 0, log[-3000:]
    assert took < STOP_TIMEOUT_S, (took, log[-3000:])
    assert "received SIGTERM" in log and "[start] stopped" in log, log[-3000:]
    assert "still running" not in log  # start.sh did not have to SIGKILL its children


@pytest.fixture(scope="module")
def exposed(image: str, tiny_models: Path) -> Iterator[tuple[Container, str]]:
    port = free_port(engine=True)
    box = Container(
        image,
        env={"WORKER_MODE": "api", "WORKER_EXPOSE_ENGINE": "1", "A1111_API_AUTH": ":".join(AUTH)},
        volumes={tiny_models: VOLUME},
        options=["-p", f"127.0.0.1:{port}:3000"],
    ).start()
    try:
        yield box, f"http://127.0.0.1:{port}"
    finally:
        box.remove()


def test_published_port_serves_health_models_and_txt2img_with_credentials(
    exposed: tuple[Container, str],
) -> None:
    box, url = exposed
    box.wait_healthy(600)
    assert requests.get(f"{url}/worker/v1/health", timeout=30).status_code == 200
    models = requests.get(f"{url}/worker/v1/models", auth=AUTH, timeout=60)
    assert models.status_code == 200, models.text
    assert "tiny_a.safetensors" in {m["file_name"] for m in models.json()["models"]}
    done = requests.post(f"{url}/worker/v1/txt2img", json=JOB, auth=AUTH, timeout=300)
    assert done.status_code == 200, done.text
    assert len(done.json()["images"]) == 1
    missing = requests.post(
        f"{url}/worker/v1/txt2img", json={**JOB, "checkpoint": "tiny_c"}, auth=AUTH, timeout=60
    )
    assert missing.json()["error"].startswith("model_not_found: checkpoint 'tiny_c' not found"), missing.text


def test_published_port_refuses_requests_without_credentials(exposed: tuple[Container, str]) -> None:
    box, url = exposed
    box.wait_healthy(600)
    assert requests.get(f"{url}/sdapi/v1/sd-models", timeout=30).status_code == 401
    assert requests.get(f"{url}/sdapi/v1/sd-models", auth=("tester", "wrong"), timeout=30).status_code == 401
    assert requests.get(f"{url}/worker/v1/models", timeout=30).status_code == 401
    assert requests.post(f"{url}/worker/v1/txt2img", json=JOB, timeout=30).status_code == 401
