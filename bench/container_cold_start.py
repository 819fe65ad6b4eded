"""Cold start of the image next to the same start without a container, alternating in one run.

Container: ``podman run`` of the built image (``WORKER_MODE=local``, ``WORKER_DEFAULT_CHECKPOINT`` set, host
network so the same loopback polls reach it), a fresh container each time, the models folder mounted as the
volume. Without: ``start.sh`` on the host's A1111 (bench/a1111_cold_start.py's run). Both are polled every
0.1 s from the moment before ``podman run`` / ``start.sh``: the engine process started (its log line / pid
file), A1111's API answers, ``/worker/v1/health`` answers 200 (the checkpoint is in memory), the worker logs
its start-up timeline (ready for jobs).

    A1111_DIR=... A1111_PYTHON=... python bench/container_cold_start.py --image TAG --models DIR \
        --checkpoint rand_sd15 [--runs 2]

``--models`` is a folder in the volume layout (checkpoints/ loras/ embeddings/ vae/), e.g. the reference's
full-size random SD1.5 (A1111 needs ~5 GB per start; one runs at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from a1111_cold_start import PHASES, TIMELINE, _answers, one_run  # noqa: E402
from extensions_cold_start import STARTUP  # noqa: E402

from bench.common import add_smoke_flag, results_file, skip_smoke  # noqa: E402
from tests.support.podman import CPU_ENV, VOLUME, podman, podman_env  # noqa: E402
from tests.support.real_a1111 import a1111_dir, free_port, place_model_file  # noqa: E402


def volume_copy(models: Path, dest: Path) -> Path:
    """A fresh volume of hard links (the worker writes its registry there): every model folder and what the
    tiny test checkpoints' configs name beside them (their text encoder folder), not the registry itself."""
    for kind in ("checkpoints", "loras", "embeddings", "vae"):
        (dest / kind).mkdir(parents=True)
    for file in sorted(models.rglob("*")):
        if file.is_file() and file.name != "registry.json":
            target = dest / file.relative_to(models)
            target.parent.mkdir(parents=True, exist_ok=True)
            place_model_file(file.resolve(), target)
    return dest


def container_run(
    image: str, models: Path, checkpoint: str, extra_env: dict[str, str] | None = None
) -> dict[str, float]:
    """Seconds from ``podman run`` to each phase of a fresh container, and A1111's own "Startup time" and its
    "load scripts" share (``a1111_startup``, ``load_scripts``) when its log has them."""
    # two calls of free_port(engine=True) would give the same first free port of A1111_TEST_PORTS
    engine_port, api_port = free_port(engine=True), free_port()
    env = {
        **CPU_ENV,
        "WORKER_MODE": "local",
        "WORKER_DEFAULT_CHECKPOINT": checkpoint,
        "WORKER_READY_TIMEOUT_S": "900",
        "WORKER_ENGINE_PORT": str(engine_port),
        "WORKER_LOCAL_API_PORT": str(api_port),
        "WORKER_LOG_FORMAT": "text",
        **(extra_env or {}),
    }
    name = f"cold-start-{os.getpid()}-{engine_port}"
    with tempfile.TemporaryDirectory(prefix="container-cold-", dir=models.parent) as tmp:
        volume = volume_copy(models, Path(tmp) / "models")
        args = ["run", "-d", "--name", name, "--network", "host", "-v", f"{volume}:{VOLUME}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        url = f"http://127.0.0.1:{engine_port}"
        began = time.monotonic()
        podman(*args, image)
        log_file = Path(tmp) / "container.log"
        with log_file.open("w") as sink:
            follower = subprocess.Popen(
                ["podman", "logs", "-f", name], stdout=sink, stderr=sink, env=podman_env()
            )
        marks: dict[str, float] = {}
        try:
            while "worker_ready" not in marks:
                now = time.monotonic() - began
                log = log_file.read_text(errors="replace")
                # podman logs -f ends with the container
                if now > 900 or "[start] ERROR" in log or follower.poll() is not None:
                    raise RuntimeError(f"container not ready after {now:.0f} s:\n{log[-3000:]}")
                if "engine_started" not in marks and "[start] engine started" in log:
                    marks["engine_started"] = now
                if "api_up" not in marks and _answers(f"{url}/sdapi/v1/sd-models"):
                    marks["api_up"] = now
                if "checkpoint_loaded" not in marks and _answers(f"{url}/worker/v1/health"):
                    marks["checkpoint_loaded"] = now
                if TIMELINE.search(log):
                    marks["worker_ready"] = now
                time.sleep(0.1)
        finally:
            podman("rm", "-f", "-t", "10", name, check=False, timeout=120)
            follower.wait(30)
        startup = STARTUP.search(log_file.read_text(errors="replace"))
    times = {phase: round(marks[phase], 2) for phase in PHASES}
    if startup:
        times |= {"a1111_startup": float(startup[1]), "load_scripts": float(startup[2])}
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/a1111-worker:test")
    parser.add_argument("--models", type=Path, help="volume-layout folder (required unless --smoke)")
    parser.add_argument("--checkpoint", default="rand_sd15", help="WORKER_DEFAULT_CHECKPOINT")
    parser.add_argument("--runs", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--hf-home", type=Path, default=None, help="the host A1111's offline HF cache")
    add_smoke_flag(parser)
    args = parser.parse_args()
    install = a1111_dir()
    if install is None or args.models is None:
        reason = (
            "set A1111_DIR (and A1111_PYTHON) for the start without a container, and --models (a volume with "
            "a checkpoint); see docs/testing.md"
        )
        if args.smoke:
            return skip_smoke(reason)
        parser.error(reason)
    if args.smoke:
        args.runs = 1
    results: dict[str, list[dict[str, float]]] = {"container": [], "no_container": []}
    for _ in range(args.runs):
        results["container"].append(container_run(args.image, args.models.resolve(), args.checkpoint))
        print(f"container: {results['container'][-1]}", flush=True)
        results["no_container"].append(
            one_run(install, args.models.resolve(), args.checkpoint, True, args.hf_home)
        )
        print(f"no_container: {results['no_container'][-1]}", flush=True)
    medians = {
        setting: {phase: round(statistics.median(run[phase] for run in runs), 1) for phase in PHASES}
        for setting, runs in results.items()
    }
    print("\nsetting | " + " | ".join(PHASES) + "  (seconds since podman run / start.sh, medians)")
    for setting, row in medians.items():
        print(f"{setting} | " + " | ".join(str(row[phase]) for phase in PHASES))
    out = results_file("container_cold_start.json", args.smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "image": args.image,
        "models": str(args.models),
        "checkpoint": args.checkpoint,
        "runs": results,
        "medians": medians,
        "cpu_count": os.cpu_count(),
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
