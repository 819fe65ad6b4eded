"""start.sh with WORKER_ENGINE=a1111 on the real A1111: the image's layout, api mode, crash, SIGTERM.

One start.sh for the module, prepared the way the Dockerfile prepares the image (``--install-extension``,
``--bake-models``), in api mode and exposed with ``--api-auth``; the tests run in file order and the last
ones kill the engine and stop start.sh.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.real_a1111 import ROOT, START_SH, Launched, launch, start_env, volume_with_tiny_models

AUTH = ("tester", "a1111-suite-pass")
JOB: dict[str, Any] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module")
def started(install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    tmp = tmp_path_factory.mktemp("start-sh")
    models = volume_with_tiny_models(install, tmp / "models")
    env = start_env(
        install,
        tmp,
        models,
        WORKER_EXPOSE_ENGINE="1",
        A1111_API_AUTH=":".join(AUTH),
        WORKER_ENGINE_MAX_RESTARTS="2",
    )
    # The image's build steps, through the same start.sh: the extension, then a baked LoRA and checkpoint.
    bake = tmp / "bake"
    (bake / "loras").mkdir(parents=True)
    (bake / "checkpoints").mkdir()
    shutil.copy(models / "loras" / "tiny_lora.safetensors", bake / "loras" / "baked_lora.safetensors")
    shutil.copy(
        models / "checkpoints" / "tiny_b.safetensors", bake / "checkpoints" / "baked_ckpt.safetensors"
    )
    for step in (
        ["--install-extension", str(ROOT / "webui_extensions" / "worker-routes")],
        ["--bake-models", str(bake)],
    ):
        subprocess.run([str(START_SH), *step], env=env, check=True, capture_output=True, timeout=60)
    process = launch(env, tmp / "start.log")
    try:
        yield process
    finally:
        process.stop()


def get(started: Launched, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(f"{started.url}{path}", timeout=30, **kwargs)


def test_health_goes_from_starting_to_ready(started: Launched) -> None:
    seen = started.wait_ready(300)
    assert seen[0] == "starting" and seen[-1] == "ready", seen
    assert "not found" not in seen  # the extension loaded from <data-dir>/extensions
    report = get(started, "/worker/v1/health").json()
    assert report["checkpoint"].startswith("tiny_a.safetensors")


def test_baked_models_are_listed_by_a1111(started: Launched) -> None:
    """Issue 8 #3: a baked LoRA must be visible although --lora-dir points at the volume."""
    loras = get(started, "/sdapi/v1/loras").json()  # A1111 serves this route without its auth
    assert "baked_lora" in {lora["name"] for lora in loras}
    models = get(started, "/sdapi/v1/sd-models", auth=AUTH).json()
    assert "baked_ckpt" in {m["model_name"] for m in models}


def test_engine_api_requires_the_credentials_when_exposed(started: Launched) -> None:
    assert get(started, "/sdapi/v1/sd-models").status_code == 401
    assert get(started, "/sdapi/v1/sd-models", auth=("tester", "wrong")).status_code == 401
    assert get(started, "/worker/v1/models").status_code == 401
    assert requests.post(f"{started.url}/worker/v1/txt2img", json=JOB, timeout=30).status_code == 401
    assert get(started, "/worker/v1/health").status_code == 200  # open on purpose: load balancers poll it


def test_worker_routes_run_the_job_path(started: Launched) -> None:
    models = get(started, "/worker/v1/models", auth=AUTH)
    assert models.status_code == 200, models.text
    assert "tiny_a.safetensors" in {m["file_name"] for m in models.json()["models"]}
    done = requests.post(
        f"{started.url}/worker/v1/txt2img", json={**JOB, "clip_skip": 2}, auth=AUTH, timeout=300
    )
    assert done.status_code == 200, done.text
    assert len(done.json()["images"]) == 1 and done.json()["warnings"] == []
    strict = requests.post(
        f"{started.url}/worker/v1/txt2img", json={**JOB, "sampler": "Euler ancestral"}, auth=AUTH, timeout=60
    )
    assert strict.status_code == 422
    assert strict.json()["error"].startswith(
        "input_invalid: sampler 'Euler ancestral' not found; nearest: Euler a"
    )


def test_a_crashed_engine_is_restarted(started: Launched) -> None:
    pid_file = Path(started.env["WORKER_ENGINE_PID_FILE"])
    first = int(pid_file.read_text())
    os.kill(first, signal.SIGKILL)
    # The extension's routes live in A1111 and are gone with it; the worker's own routes server (what they
    # forward to) answers at once that the engine is unavailable, so the job is retried elsewhere.
    routes = started.env["WORKER_ROUTES_URL"]
    down = requests.post(f"{routes}/worker/v1/txt2img", json=JOB, timeout=60)
    assert down.status_code == 503, down.text
    assert down.json()["error"].startswith("engine_unavailable: ") and down.json()["refresh_worker"] is True
    deadline = time.monotonic() + 60
    while int(pid_file.read_text() or first) == first:
        assert time.monotonic() < deadline, started.log()[-3000:]
        time.sleep(0.2)
    assert started.wait_ready(300)[-1] == "ready"
    assert "restart 1 of 2" in started.log()
    again = requests.post(f"{started.url}/worker/v1/txt2img", json=JOB, auth=AUTH, timeout=300)
    assert again.status_code == 200, again.text


def test_sigterm_stops_engine_and_worker(started: Launched) -> None:
    pid_file = Path(started.env["WORKER_ENGINE_PID_FILE"])
    engine_pid = int(pid_file.read_text())
    begun = time.monotonic()
    started.proc.send_signal(signal.SIGTERM)
    assert started.proc.wait(40) == 0
    assert time.monotonic() - begun < 35
    with pytest.raises(ProcessLookupError):
        os.kill(engine_pid, 0)
    assert not pid_file.exists()
    assert "received SIGTERM" in started.log()
