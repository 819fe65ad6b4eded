"""The built image, driven with podman from outside: build (or reuse by tag), models made inside it, containers.

Used by tests/image (marker ``image``) and bench/container_cold_start.py. The image comes from
``WORKER_IMAGE`` (a tag already built) or is built by scripts/build_image.sh ``--offline $A1111_SOURCES``
(its layers are reused, so a second build after a worker-only change takes seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build_image.sh"
MODELS_SCRIPT = ROOT / "scripts" / "a1111_test_models.py"
DEFAULT_TAG = "localhost/a1111-worker:test"
#: where tests/image/proxy_recorder.py listens in the namespace it shares with the container under test
RECORDER_PORT = 17080
#: a container in the recorder's namespace sends every client that honours the proxy variables there
RECORDED_PROXY_ENV = {
    **dict.fromkeys(
        ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), f"http://127.0.0.1:{RECORDER_PORT}"
    ),
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
#: where the image mounts the network volume (the Dockerfile's WORKER_MODELS_DIR)
VOLUME = "/runpod-volume/models"
#: A1111 on a CPU: what the image's GPU defaults need besides (tests/support/real_a1111.CPU_ARGS)
CPU_ENV = {
    "WORKER_SKIP_GPU_CHECK": "1",
    "A1111_EXTRA_ARGS": "--use-cpu all --no-half --precision full --skip-torch-cuda-test",
    "OMP_NUM_THREADS": "2",
}


def work_dir() -> Path:
    return Path(os.environ.get("IMAGE_WORK_DIR") or ROOT / "build" / "image")


def podman_env() -> dict[str, str]:
    """podman with the containers.conf build_image.sh writes (runc, ulimits the host accepts), if there is one."""
    env = dict(os.environ)
    conf = work_dir() / "containers.conf"
    if "CONTAINERS_CONF" not in env and conf.is_file():
        env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env(), check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:3])} … failed ({result.returncode}): {result.stderr[-3000:]}"
        )
    return result


def skip_reason() -> str | None:
    """Why the image suite cannot run here, or None."""
    if shutil.which("podman") is None:
        return "needs podman (Debian: apt-get install -y podman runc mmdebstrap); see docs/testing.md"
    if not (os.environ.get("WORKER_IMAGE") or os.environ.get("WORKER_IMAGE_TESTS") == "1"):
        return (
            "builds and runs the multi-GB image (tens of minutes the first time): set WORKER_IMAGE_TESTS=1 "
            "(with A1111_SOURCES for the offline build) or WORKER_IMAGE=<built tag>; see docs/testing.md"
        )
    return None


def ensure_image(bake: tuple[str, Path] | None = None, tag: str | None = None) -> str:
    """``WORKER_IMAGE`` when set (and no bake), else the offline build's tag, built or updated now."""
    wanted = os.environ.get("WORKER_IMAGE")
    if wanted and bake is None:
        if podman("image", "exists", wanted, check=False).returncode != 0:
            raise RuntimeError(f"WORKER_IMAGE={wanted} is not a local image (podman images)")
        return wanted
    sources = os.environ.get("A1111_SOURCES")
    if not sources:
        raise RuntimeError(
            "building the image needs A1111_SOURCES: a folder of A1111's git repositories (docs/deploying.md)"
        )
    tag = tag or DEFAULT_TAG
    command = [str(BUILD_SCRIPT), "--offline", sources]
    if bake is not None:
        command += ["--bake", bake[0], str(bake[1])]
    subprocess.run(
        command, env={**podman_env(), "IMAGE_TAG": tag}, check=True, timeout=3600, capture_output=True
    )
    return tag


def make_tiny_models(image: str, dest: Path) -> Path:
    """The small A1111 test models, built by the image's own A1111 (no A1111 needed on the host)."""
    if (dest / "checkpoints" / "tiny_a.safetensors").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    # made at the volume's path inside the container: the checkpoints' configs name their text encoder folder
    podman(
        "run", "--rm", "--network", "none", "--entrypoint", "/opt/a1111/venv/bin/python",
        "-v", f"{dest}:{VOLUME}", "-v", f"{MODELS_SCRIPT}:/tmp/a1111_test_models.py:ro",
        image, "/tmp/a1111_test_models.py", VOLUME, "--webui", "/opt/a1111",
        timeout=900,
    )  # fmt: skip
    return dest


@dataclass
class Container:
    """One container of the image, started detached; always stopped and removed by :meth:`remove`."""

    image: str
    env: dict[str, str] = field(default_factory=dict)
    volumes: dict[Path, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"worker-image-test-{uuid.uuid4().hex[:8]}")
    started_at: float = 0.0

    def start(self) -> Container:
        args = ["run", "-d", "--name", self.name, *self.options]
        for key, value in {**CPU_ENV, **self.env}.items():
            args += ["-e", f"{key}={value}"]
        for host, inside in self.volumes.items():
            args += ["-v", f"{host}:{inside}"]
        self.started_at = time.monotonic()
        podman(*args, self.image)
        return self

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(podman("inspect", self.name).stdout)
        return data[0]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def healthcheck(self) -> bool:
        """The image's HEALTHCHECK command, run now (``podman healthcheck run``)."""
        return podman("healthcheck", "run", self.name, check=False, timeout=30).returncode == 0

    def exec(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=False, timeout=timeout)

    def curl(self, url: str, *args: str, timeout: float = 300) -> tuple[int, str]:
        """An HTTP request from inside the container: (status, body)."""
        result = self.exec(
            "curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", "--max-time", str(int(timeout)),
            *args, url, timeout=timeout + 10,
        )  # fmt: skip
        body, _, status = result.stdout.rpartition("\n")
        return int(status or 0), body

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_healthy(self, timeout: float) -> list[bool]:
        """Run the HEALTHCHECK until it passes; returns every result seen (False while starting)."""
        seen: list[bool] = []
        deadline = time.monotonic() + timeout
        while not (seen and seen[-1]):
            if time.monotonic() > deadline or not self.running():
                raise AssertionError(f"not healthy after {timeout} s (seen {seen}):\n{self.logs()[-4000:]}")
            seen.append(self.healthcheck())
            if not seen[-1]:
                time.sleep(1)
        return seen

    def wait_local_api(self, timeout: float, port: int = 8000) -> None:
        """RunPod's local API answers only once the worker is ready (after the default checkpoint and warm-up)."""
        deadline = time.monotonic() + timeout
        while self.curl(f"http://127.0.0.1:{port}/health", timeout=5)[0] == 0:
            if time.monotonic() > deadline or not self.running():
                raise AssertionError(f"no local API after {timeout} s:\n{self.logs()[-4000:]}")
            time.sleep(1)

    def stop(self, timeout: int) -> int:
        """``podman stop -t TIMEOUT``; returns the container's exit status."""
        podman("stop", "-t", str(timeout), self.name, timeout=timeout + 60)
        return int(self.inspect()["State"]["ExitCode"])

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            podman("rm", "-f", "-t", "0", self.name, check=False, timeout=120)


def start_recorder(image: str, script: Path) -> Container:
    """The recording proxy (tests/image/proxy_recorder.py) in a namespace of its own, with no route anywhere."""
    box = Container(image, options=["--network", "none", "--entrypoint", "/opt/worker-venv/bin/python"])
    podman(
        "run", "-d", "--name", box.name, *box.options, "-v", f"{script}:/tmp/proxy_recorder.py:ro",
        image, "/tmp/proxy_recorder.py", str(RECORDER_PORT),
    )  # fmt: skip
    return box


def proxy_requests(recorder: Container) -> list[str]:
    """Every request a client sent to the recording proxy."""
    assert "recorder listening" in recorder.logs()
    return [line for line in recorder.logs().splitlines() if line.startswith("PROXY-REQUEST")]


def start_recorded(image: str, volume: Path, recorder: Container) -> Container:
    """The image as RunPod runs it (``WORKER_MODE=local``, ``tiny_a`` pre-loaded) in the recorder's namespace:
    no route anywhere, every client that honours the proxy variables recorded."""
    return Container(
        image,
        env={"WORKER_MODE": "local", "WORKER_DEFAULT_CHECKPOINT": "tiny_a", **RECORDED_PROXY_ENV},
        volumes={volume: VOLUME},
        options=["--network", f"container:{recorder.name}"],
    ).start()
