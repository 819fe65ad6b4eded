"""start.sh run for real: flags, refusal of unsafe setups, supervision, readiness deadline, SIGTERM.

The embedded engine stands in for A1111 (tiny demo models, free ports, tmp folders). Every process a
test starts is in its own session and killed by process group at the end.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
START = str(ROOT / "start.sh")
VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "A1111_"))}
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        PYTHONPATH=str(ROOT),
        WORKER_MODELS_DIR=str(tmp / "models"),
        WORKER_ENGINE_PID_FILE=str(tmp / "engine.pid"),
        WORKER_ENGINE_PORT=str(free_port()),
        WORKER_LOG_FORMAT="text",
        A1111_DIR=str(tmp / "no-a1111"),
        A1111_DATA_DIR=str(tmp / "a1111-data"),
    )
    env.update(extra)
    return env


def print_command(tmp: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [START, "--print-engine-command"],
        env=env_for(tmp, **extra),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def fake_a1111_dir(tmp_path: Path) -> Path:
    (tmp_path / "a1111").mkdir()
    (tmp_path / "a1111" / "launch.py").write_text("raise SystemExit('not a real A1111')\n")
    return tmp_path / "a1111"


def test_a1111_flags(tmp_path: Path, fake_a1111_dir: Path) -> None:
    result = print_command(tmp_path, A1111_DIR=str(fake_a1111_dir), WORKER_ENGINE_PORT="3000")
    assert result.returncode == 0, result.stderr
    args = shlex.split(result.stdout)
    assert args[1:3] == ["-u", str(fake_a1111_dir / "launch.py")]
    flags = ["--api", "--nowebui", "--xformers", "--opt-sdp-attention", "--no-half-vae"]
    flags += ["--skip-prepare-environment", "--skip-install", "--no-download-sd-model"]
    flags += ["--skip-version-check", "--skip-python-version-check"]
    for flag in flags:
        assert flag in args, flag
    pairs = dict(itertools.pairwise(args))
    models = tmp_path / "models"
    assert pairs["--port"] == "3000" and pairs["--server-name"] == "127.0.0.1"
    assert pairs["--ckpt-dir"] == f"{models}/checkpoints" and pairs["--lora-dir"] == f"{models}/loras"
    assert pairs["--embeddings-dir"] == f"{models}/embeddings" and pairs["--vae-dir"] == f"{models}/vae"
    assert pairs["--data-dir"] == str(tmp_path / "a1111-data")
    for never in ("--disable-safe-unpickle", "--no-hashing", "--listen", "--api-auth"):
        assert never not in args


def test_a1111_options(tmp_path: Path, fake_a1111_dir: Path) -> None:
    a1111 = {"A1111_DIR": str(fake_a1111_dir)}
    hashing = shlex.split(print_command(tmp_path, **a1111, A1111_NO_HASHING="1").stdout)
    assert "--no-hashing" in hashing
    extra = shlex.split(print_command(tmp_path, **a1111, A1111_EXTRA_ARGS="--medvram --api-log").stdout)
    assert extra[-2:] == ["--medvram", "--api-log"]

    refused = print_command(tmp_path, **a1111, WORKER_EXPOSE_ENGINE="1")
    assert refused.returncode != 0 and "A1111_API_AUTH" in refused.stderr
    # blank users or passwords are no credentials; a second ':' would stop A1111 at start
    for blank in (" : ", "u: ", "\t:p", "u:p, : ", ":", "u:", "u:p:q"):
        refused = print_command(tmp_path, **a1111, WORKER_EXPOSE_ENGINE="1", A1111_API_AUTH=blank)
        assert refused.returncode != 0 and "A1111_API_AUTH" in refused.stderr, repr(blank)
        assert "0.0.0.0" not in refused.stdout

    exposed = print_command(tmp_path, **a1111, WORKER_EXPOSE_ENGINE="1", A1111_API_AUTH="u:topsecret")
    assert exposed.returncode == 0, exposed.stderr
    args = shlex.split(exposed.stdout)
    assert dict(itertools.pairwise(args))["--server-name"] == "0.0.0.0"
    assert "--api-auth" in args and "topsecret" not in exposed.stdout + exposed.stderr


def test_engine_selection(tmp_path: Path, fake_a1111_dir: Path) -> None:
    embedded = shlex.split(print_command(tmp_path).stdout)  # auto, no launch.py → embedded
    assert embedded[1:4] == ["-m", "diffusers_server", "serve"]
    assert shlex.split(print_command(tmp_path, A1111_DIR=str(fake_a1111_dir)).stdout)[2].endswith("launch.py")
    bad = print_command(tmp_path, WORKER_ENGINE="comfy")
    assert bad.returncode != 0 and "WORKER_ENGINE" in bad.stderr
    no_url = print_command(tmp_path, WORKER_ENGINE="external")
    assert no_url.returncode != 0 and "WORKER_A1111_URL" in no_url.stderr


def test_models_dir_defaults_to_a_local_folder(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    del env["WORKER_MODELS_DIR"]
    result = subprocess.run(
        [START, "--print-engine-command"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    args = shlex.split(result.stdout)
    expected = "/runpod-volume/models" if Path("/runpod-volume").is_dir() else str(tmp_path / "models")
    assert dict(itertools.pairwise(args))["--models-dir"] == expected


def test_a1111_without_gpu_is_refused_with_advice(tmp_path: Path, fake_a1111_dir: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    result = subprocess.run(
        [START],
        env=env_for(tmp_path, A1111_DIR=str(fake_a1111_dir)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "nvidia-smi" in result.stderr and "WORKER_ENGINE=embedded" in result.stderr


def test_engine_never_ready_makes_the_worker_exit(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = env_for(tmp_path, WORKER_ENGINE="external", WORKER_A1111_URL=dead, WORKER_READY_TIMEOUT_S="3")
    started = time.monotonic()
    result = subprocess.run([START], env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "not ready within the 3 s deadline" in output
    assert time.monotonic() - started < 30


# --- with the embedded engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "models"
    subprocess.run(
        [sys.executable, "-m", "diffusers_server", "make-demo-models", str(folder)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return folder


@pytest.fixture
def launch(tmp_path: Path, demo_models: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(**extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
        shutil.copytree(demo_models, tmp_path / "models", dirs_exist_ok=True)
        env = env_for(
            tmp_path, WORKER_ENGINE="embedded", WORKER_EMBEDDED_EXTRA_ARGS="--threads 1 --cpu", **extra
        )
        log = (tmp_path / "start.log").open("w")
        proc = subprocess.Popen(
            [START], env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        procs.append(proc)
        return proc, env

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def read_pid(path: Path, deadline_s: float, not_this: int | None = None) -> int:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            pid = int(path.read_text().strip())
            if pid != not_this:
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no new pid in {path} within {deadline_s} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.engine  # the demo models and the embedded engine it launches need torch
def test_crashed_engine_is_restarted_then_given_up(launch: object, tmp_path: Path) -> None:
    proc, env = launch(WORKER_MODE="api", WORKER_ENGINE_MAX_RESTARTS="1")  # type: ignore[operator]
    pid_file = Path(env["WORKER_ENGINE_PID_FILE"])
    first = read_pid(pid_file, 30)
    os.kill(first, signal.SIGKILL)
    second = read_pid(pid_file, 30, not_this=first)
    assert alive(second)
    os.kill(second, signal.SIGKILL)
    assert proc.wait(30) == 1
    log = (tmp_path / "start.log").read_text()
    assert "restart 1 of 1" in log and "giving up" in log


@pytest.mark.slow
@pytest.mark.engine  # the demo models and the embedded engine it launches need torch
def test_health_goes_ready_jobs_run_and_sigterm_stops_everything(launch: object, tmp_path: Path) -> None:
    api_port = str(free_port())
    proc, env = launch(WORKER_MODE="local", WORKER_LOCAL_API_PORT=api_port, WORKER_READY_TIMEOUT_S="120")  # type: ignore[operator]
    engine = f"http://127.0.0.1:{env['WORKER_ENGINE_PORT']}"
    seen: list[str] = []
    deadline = time.monotonic() + 150
    with httpx.Client(timeout=30) as client:
        while True:
            assert proc.poll() is None, (tmp_path / "start.log").read_text()
            assert time.monotonic() < deadline, f"not ready; saw {seen}"
            try:
                response = client.get(f"{engine}/worker/v1/health")
            except httpx.TransportError:
                status = "starting"  # nothing listens yet
            else:
                assert response.status_code != 404, "the embedded engine does not mount /worker/v1 routes"
                status = response.json()["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "ready":
                break
            time.sleep(0.3)
        assert seen[0] == "starting" and seen[-1] == "ready"
        # the README's run mode: RunPod's local API in front of the worker
        job_deadline = time.monotonic() + 60
        while True:
            try:
                result = client.post(
                    f"http://127.0.0.1:{api_port}/runsync",
                    json={"input": {"prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64}},
                    timeout=120,
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < job_deadline, "the worker's local API never opened"
                time.sleep(0.3)
        assert result.status_code == 200, result.text
        assert len(result.json()["output"]["images"]) == 1

    engine_pid = read_pid(Path(env["WORKER_ENGINE_PID_FILE"]), 5)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert time.monotonic() - stopped < 12
    assert not alive(engine_pid)
    assert not Path(env["WORKER_ENGINE_PID_FILE"]).exists()
