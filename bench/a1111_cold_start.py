"""Cold start on the real A1111: start.sh → engine process → API answers → checkpoint loaded → worker ready.

Each run is a new container in miniature: a fresh A1111 data dir (no hash cache), ``start.sh`` with
``WORKER_ENGINE=a1111`` in ``local`` mode (the worker behind RunPod's local API),
``WORKER_DEFAULT_CHECKPOINT`` set, then SIGTERM. Polled every 0.1 s from start.sh's launch: the engine's pid
file appears, ``/sdapi/v1/sd-models`` answers, the extension's ``/worker/v1/health`` answers 200 (the
checkpoint is in memory), the worker logs its start-up timeline (ready for jobs, after its warm-up).
Hashing on (A1111's default) and ``A1111_NO_HASHING=1`` alternate run by run.

    A1111_DIR=... [A1111_PYTHON=...] python bench/a1111_cold_start.py [--models DIR --checkpoint STEM]

``--models`` is a folder in the volume layout (checkpoints/ loras/ ...); default: the tiny test models. For a
full-size SD1.5 (the reference install's random one, 2.1 GB) check ``free -g`` first: A1111 needs ~5 GB.
``--smoke``: one run with hashing, tiny models; without A1111 it says why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import add_smoke_flag, results_file, skip_smoke  # noqa: E402
from tests.support.real_a1111 import (  # noqa: E402
    a1111_dir,
    free_port,
    launch,
    place_model_file,
    start_env,
    volume_with_tiny_models,
)

PHASES = ("engine_started", "api_up", "checkpoint_loaded", "worker_ready")
TIMELINE = re.compile(r"start-up timeline: (.*)")


def one_run(
    install: Path, models: Path, checkpoint: str, hashing: bool, hf_home: Path | None
) -> dict[str, float]:
    """Seconds from ``start.sh`` to each phase, polled every 0.1 s."""
    with tempfile.TemporaryDirectory(prefix="a1111-cold-") as tmp_name:
        tmp = Path(tmp_name)
        volume = tmp / "models"
        for kind in ("checkpoints", "loras", "embeddings", "vae"):
            (volume / kind).mkdir(parents=True)
            for file in (models / kind).glob("*") if (models / kind).is_dir() else []:
                place_model_file(file.resolve(), volume / kind / file.name)
        extra = {
            "WORKER_MODE": "local",
            "WORKER_LOCAL_API_PORT": str(free_port()),
            "WORKER_DEFAULT_CHECKPOINT": checkpoint,
            "WORKER_READY_TIMEOUT_S": "900",
            "A1111_NO_HASHING": "0" if hashing else "1",
        }
        if hf_home is not None:
            extra["HF_HOME"] = str(hf_home)
        env = start_env(install, tmp, volume, **extra)
        began = time.monotonic()
        started = launch(env, tmp / "start.log")
        marks: dict[str, float] = {}
        try:
            deadline = began + 900
            while "worker_ready" not in marks:
                if started.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"not ready:\n{started.log()[-3000:]}")
                now = time.monotonic() - began
                if "engine_started" not in marks and Path(env["WORKER_ENGINE_PID_FILE"]).exists():
                    marks["engine_started"] = now
                if "api_up" not in marks and _answers(f"{started.url}/sdapi/v1/sd-models"):
                    marks["api_up"] = now
                if "checkpoint_loaded" not in marks and _answers(f"{started.url}/worker/v1/health"):
                    marks["checkpoint_loaded"] = (
                        now  # the extension's health: 200 once the model is in memory
                    )
                if TIMELINE.search(started.log()):
                    marks["worker_ready"] = now
                time.sleep(0.1)
        finally:
            started.stop()
    return {phase: round(marks[phase], 2) for phase in PHASES}


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", type=Path, default=None, help="volume-layout folder (default: tiny models)"
    )
    parser.add_argument("--checkpoint", default="tiny_a", help="WORKER_DEFAULT_CHECKPOINT")
    parser.add_argument("--runs", type=int, default=3, help="runs per setting")
    parser.add_argument(
        "--hf-home", type=Path, default=None, help="offline HF cache (full-size SD1.5 tokenizer)"
    )
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    install = a1111_dir()
    if install is None:
        reason = "set A1111_DIR (and A1111_PYTHON) to an A1111 v1.10.1 install; see docs/testing.md"
        if args.smoke:
            return skip_smoke(reason)
        parser.error(reason)
    if args.smoke:
        args.models, args.runs = None, 1
    models = args.models or volume_with_tiny_models(
        install, Path(tempfile.mkdtemp(prefix="tiny-")) / "models"
    )
    results: dict[str, list[dict[str, float]]] = (
        {"hashing": []} if args.smoke else {"hashing": [], "no_hashing": []}
    )
    for _ in range(args.runs):
        for setting in results:
            results[setting].append(
                one_run(install, models, args.checkpoint, setting == "hashing", args.hf_home)
            )
            print(f"{setting}: {results[setting][-1]}", flush=True)
    medians = {
        setting: {phase: round(statistics.median(run[phase] for run in runs), 1) for phase in PHASES}
        for setting, runs in results.items()
    }
    print("setting | " + " | ".join(PHASES) + "  (seconds since start.sh began, medians)")
    for setting, row in medians.items():
        print(f"{setting} | " + " | ".join(str(row[phase]) for phase in PHASES))
    out = results_file("a1111_cold_start.json", args.smoke)
    record = {
        "models": str(args.models or "tiny"),
        "checkpoint": args.checkpoint,
        "runs": results,
        "medians": medians,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}; cpu count {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
