"""A real AUTOMATIC1111 v1.10.1 for the integration suite and the transcript recorder.

Configured by the environment (docs/testing.md):

* ``A1111_DIR``: an A1111 install (``scripts/setup_a1111.sh`` makes one); ``start.sh`` launches it with
  ``WORKER_ENGINE=a1111`` on small deterministic models built once from ``scripts/a1111_test_models.py``.
* ``A1111_PYTHON``: its interpreter (default ``$A1111_DIR/venv/bin/python``, else ``$A1111_DIR/../venv/bin/python``).
* ``A1111_URL``: an A1111 that is already running, used as it is (its own models) instead.
* ``A1111_TEST_PORTS``: ``FIRST-LAST``, the ports the launched engines may use (default: any free port).

Nothing here imports A1111: it runs in its own Python, reached over HTTP like in production.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
START_SH = ROOT / "start.sh"
MODELS_SCRIPT = ROOT / "scripts" / "a1111_test_models.py"
#: What a CPU-only A1111 needs on top of start.sh's own flags.
CPU_ARGS = "--use-cpu all --no-half --precision full --skip-torch-cuda-test"
TINY = {
    "checkpoint": "tiny_a",
    "other_checkpoint": "tiny_b",
    "lora": "tiny_lora",
    "lora_alias": "tiny_lora_v1",
}
TINY.update(embedding="tiny_emb", vae="tiny_vae.safetensors")


def a1111_dir() -> Path | None:
    value = os.environ.get("A1111_DIR", "").strip()
    return Path(value).expanduser().resolve() if value else None


def a1111_url() -> str | None:
    value = os.environ.get("A1111_URL", "").strip().rstrip("/")
    return value or None


def a1111_python(install: Path) -> Path:
    given = os.environ.get("A1111_PYTHON", "").strip()
    if given:
        return Path(given).expanduser()
    for candidate in (install / "venv" / "bin" / "python", install.parent / "venv" / "bin" / "python"):
        if candidate.exists():
            return candidate
    raise RuntimeError(f"no Python for the A1111 in {install}: set A1111_PYTHON")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, engine: bool = False) -> int:
    """A free loopback port; an engine's comes from ``A1111_TEST_PORTS`` when that is set."""
    wanted = os.environ.get("A1111_TEST_PORTS", "").strip() if engine else ""
    if wanted:
        first, _, last = wanted.partition("-")
        for port in range(int(first), int(last or first) + 1):
            if _port_free(port):
                return port
        raise RuntimeError(f"no free port in A1111_TEST_PORTS={wanted}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def built_models(install: Path, script: Path, name: str, marker: str, *, cwd: Path | None = None) -> Path:
    """The models ``script`` writes with A1111's Python, built once per version of the script and cached.

    ``marker`` is a file (relative to the folder) the script writes last; the build happens in a temporary folder
    renamed into place, so a failed or concurrent build never leaves a half folder under the final name.
    """
    digest = hashlib.sha256(script.read_bytes() + str(install).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "a1111-worker-tests"
    target = cache / f"{name}-{digest}"
    if (target / marker).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=cache))
    result = subprocess.run(
        [str(a1111_python(install)), str(script), str(building), "--webui", str(install)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"},
    )
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"building {name} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    # The tiny models' configs name the text encoder folder by absolute path: rewrite them for the final place.
    for config in (building / "checkpoints").glob("*.yaml"):
        config.write_text(config.read_text().replace(str(building), str(target)))
    with contextlib.suppress(OSError):
        building.rename(target)
    shutil.rmtree(building, ignore_errors=True)
    return target


def tiny_models(install: Path) -> Path:
    """The small models (about 15 s the first time), cached."""
    return built_models(install, MODELS_SCRIPT, "tiny-models", "checkpoints/tiny_a.safetensors")


def volume_with_tiny_models(install: Path, dest: Path) -> Path:
    """A models folder in the volume layout holding the tiny models (hard links: instant, no space)."""
    source = tiny_models(install)
    for kind in ("checkpoints", "loras", "embeddings", "vae"):
        (dest / kind).mkdir(parents=True, exist_ok=True)
        for file in (source / kind).iterdir():
            target = dest / kind / file.name
            if not target.exists():
                place_model_file(file, target)
    return dest


def place_model_file(source: Path, target: Path) -> None:
    """Hard link (instant, no space) or copy: a symlink out of the models folder is refused as unusable."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def start_env(install: Path, tmp: Path, models: Path, **extra: str) -> dict[str, str]:
    """The environment ``start.sh`` gets to run this A1111 on a CPU, offline, on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "A1111_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        PYTHONPATH=str(ROOT),
        WORKER_ENGINE="a1111",
        WORKER_MODE="api",
        WORKER_PYTHON=sys.executable,
        WORKER_SKIP_GPU_CHECK="1",
        WORKER_MODELS_DIR=str(models),
        WORKER_ENGINE_PORT=str(free_port(engine=True)),
        WORKER_ROUTES_PORT=str(free_port()),
        WORKER_ENGINE_PID_FILE=str(tmp / "engine.pid"),
        WORKER_LOG_FORMAT="text",
        WORKER_STOP_TIMEOUT_S="20",
        A1111_DIR=str(install),
        A1111_PYTHON=str(a1111_python(install)),
        A1111_DATA_DIR=str(tmp / "a1111-data"),
        A1111_EXTRA_ARGS=CPU_ARGS,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp / "hf-home"),
        GRADIO_ANALYTICS_ENABLED="False",
        DO_NOT_TRACK="1",
        OMP_NUM_THREADS="2",
    )
    env["WORKER_ROUTES_URL"] = f"http://127.0.0.1:{env['WORKER_ROUTES_PORT']}"
    env.update(extra)
    return env


@dataclass
class Launched:
    """``start.sh`` running in its own session; ``stop()`` ends the whole process group."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['WORKER_ENGINE_PORT']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 300.0, auth: tuple[str, str] | None = None) -> list[str]:
        """Poll ``/worker/v1/health`` until ``ready``; returns the statuses seen (``starting`` = no answer)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"start.sh exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout_s} s (saw {seen}):\n{self.log()[-4000:]}")
            try:
                response = requests.get(f"{self.url}/worker/v1/health", timeout=5, auth=auth)
                status = "not found" if response.status_code == 404 else str(response.json().get("status"))
            except (requests.RequestException, ValueError):
                status = "starting"
            if not seen or seen[-1] != status:
                seen.append(status)
            if status in ("ready", "not found"):
                return seen
            time.sleep(0.3)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Anything left in the group (it should be empty after start.sh's own shutdown).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return int(self.proc.returncode)


def launch(env: dict[str, str], log_path: Path) -> Launched:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(START_SH)], env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    return Launched(proc=proc, env=env, log_path=log_path)


@contextlib.contextmanager
def launched(env: dict[str, str], log_path: Path, *, timeout_s: float = 300.0) -> Iterator[Launched]:
    """start.sh running and ready; always stopped afterwards."""
    started = launch(env, log_path)
    try:
        started.wait_ready(timeout_s)
        yield started
    finally:
        started.stop()
