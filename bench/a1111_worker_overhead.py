"""The worker's cost per job on the real A1111: ``JobRunner.run`` minus the same txt2img sent to A1111 itself.

A1111 v1.10.1 is launched by start.sh (``WORKER_ENGINE=a1111``, CPU) on the tiny models of
scripts/a1111_test_models.py. The worker's own payload for the job is captured once, then each round sends it
straight through ``A1111Client.txt2img`` and runs the job through the handler, alternately, so both sides see
the same engine state. The difference is what the worker adds: validation, pre-flight against the cached
lists, translation, the post-generation ``/progress`` check and verification, the progress relay thread and
output shaping. On a busy machine the engine's own variance (seconds) swamps that difference, so the table
also gives the worker's stages as it times them inside each job (``timings_ms``: total minus generate).

    A1111_DIR=... [A1111_PYTHON=...] python bench/a1111_worker_overhead.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.real_a1111 import a1111_dir, launched, start_env, volume_with_tiny_models  # noqa: E402
from worker.a1111.client import A1111Client  # noqa: E402
from worker.handler import JobRunner  # noqa: E402
from worker.registry import ModelRegistry  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402


def captured_payload(runner: JobRunner, job_input: dict[str, Any]) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []
    original = runner.engine.txt2img

    def capture(payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        sent.append(payload)
        return original(payload, timeout_s=timeout_s)

    runner.engine.txt2img = capture  # type: ignore[method-assign]
    try:
        output = runner.run({"id": "capture", "input": job_input})
    finally:
        runner.engine.txt2img = original  # type: ignore[method-assign]
    assert isinstance(output, dict) and "error" not in output, output
    return sent[0]


def measure(runner: JobRunner, engine: A1111Client, job_input: dict[str, Any], rounds: int) -> dict[str, Any]:
    payload = captured_payload(runner, job_input)
    direct, handled, outside_generate, verify = [], [], [], []
    for index in range(rounds + 3):  # the first 3 are warm-up
        started = time.perf_counter()
        engine.txt2img(payload, timeout_s=300)
        direct_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        output = runner.run({"id": f"bench-{index}", "input": job_input})
        handled_ms = (time.perf_counter() - started) * 1000
        assert isinstance(output, dict) and "error" not in output, output
        if index >= 3:
            direct.append(direct_ms)
            handled.append(handled_ms)
            timings = output["timings_ms"]
            outside_generate.append(timings["total"] - timings["generate"])
            verify.append(timings["verify"])
    overheads = [h - d for h, d in zip(handled, direct, strict=True)]
    return {
        "job": f"{job_input['width']}x{job_input['height']}, {job_input['steps']} steps, "
        f"{job_input.get('batch_size', 1)} image(s)",
        "engine_ms_median": round(statistics.median(direct), 1),
        "handler_ms_median": round(statistics.median(handled), 1),
        "overhead_ms_median": round(statistics.median(overheads), 1),
        "overhead_ms_p10_p90": [round(q, 1) for q in statistics.quantiles(overheads, n=10)[::8]],
        "ratio_median": round(statistics.median(handled) / statistics.median(direct), 3),
        # The worker's own stages, timed inside the job: robust to the engine's variance.
        "own_stages_ms_median": round(statistics.median(outside_generate), 1),
        "verify_ms_median": round(statistics.median(verify), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    install = a1111_dir()
    if install is None:
        parser.error("set A1111_DIR (and A1111_PYTHON) to an A1111 v1.10.1 install; see docs/testing.md")
    jobs = [
        {
            "prompt": "a lighthouse at dusk",
            "steps": 4,
            "width": 64,
            "height": 64,
            "seed": 1,
            "sampler": "Euler a",
        },
        {
            "prompt": "a lighthouse at dusk <lora:tiny_lora:0.8>",
            "steps": 4,
            "width": 256,
            "height": 256,
            "seed": 1,
            "batch_size": 2,
            "clip_skip": 2,
            "sampler": "DPM++ 2M Karras",
        },
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="a1111-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = volume_with_tiny_models(install, tmp / "models")
        with launched(start_env(install, tmp, models), tmp / "start.log") as started:
            settings = WorkerSettings(a1111_url=started.url, models_dir=models, job_timeout_s=300)  # type: ignore[arg-type]
            engine = A1111Client(started.url, request_timeout_s=60)
            runner = JobRunner(
                settings,
                A1111Client(started.url, request_timeout_s=60),
                provider=ModelRegistry.from_settings(settings),
            )
            for job in jobs:
                rows.append(measure(runner, engine, job, args.rounds))
    header = (
        "job",
        "engine ms",
        "handler ms",
        "overhead ms",
        "p10..p90",
        "ratio",
        "own stages ms",
        "verify ms",
    )
    print(" | ".join(header))
    for row in rows:
        low, high = row["overhead_ms_p10_p90"]
        cells = [row["job"], row["engine_ms_median"], row["handler_ms_median"], row["overhead_ms_median"]]
        tail = [f"{low}..{high}", row["ratio_median"], row["own_stages_ms_median"], row["verify_ms_median"]]
        print(" | ".join(str(cell) for cell in [*cells, *tail]))
    out = ROOT / "bench" / "results" / "a1111_worker_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
