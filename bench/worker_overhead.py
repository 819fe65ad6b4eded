"""The worker's own cost per job: handler wall time minus the engine's time, for 1 and 4 images.

The engine is the fake A1111 (tests/support/fake_a1111.py) in a separate process, answering every txt2img with
the same 512x512 PNG, so its time is pure HTTP + JSON. Each round runs the same payload twice, side by side:
once straight through ``A1111Client.txt2img`` (the engine's time as the worker sees it) and once through
``JobRunner.run`` (validation, pre-flight, translation, the same call, output shaping, size check). The
difference is the worker's overhead. Also reported: peak RSS of this (worker) process, and whether any image
was decoded (Pillow's Image module must never be imported on PNG pass-through).

    python bench/worker_overhead.py [--rounds 60]

Targets (issue 2): median overhead < 5 ms per job, < 1 ms per extra image, peak RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.engine import A1111Client  # noqa: E402
from worker.handler import JobRunner  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402


def start_fake_engine() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_a1111", "--port", "0", "--png-size", "512"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line.strip().rsplit(" ", 1)[-1]


def measure(runner: JobRunner, engine: A1111Client, images: int, rounds: int) -> dict[str, float]:
    job_input = {"prompt": "a lighthouse at dusk", "sampler": "Euler a", "seed": 1, "batch_size": images}
    payload = {
        "prompt": "a lighthouse at dusk",
        "sampler_name": "Euler a",
        "seed": 1,
        "batch_size": images,
        "save_images": False,
        "send_images": True,
    }
    direct, handled, image_bytes = [], [], 0
    for index in range(rounds + 5):  # the first 5 are warm-up
        started = time.perf_counter()
        response = engine.txt2img(payload, timeout_s=30)
        direct_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        output = runner.run({"id": f"bench-{index}", "input": job_input})
        handled_ms = (time.perf_counter() - started) * 1000
        assert isinstance(output, dict) and "error" not in output, output
        assert output["images"] == response["images"]
        if index >= 5:
            direct.append(direct_ms)
            handled.append(handled_ms)
            image_bytes = sum(len(image) for image in output["images"])
    overheads = [h - d for h, d in zip(handled, direct, strict=True)]
    return {
        "images": images,
        "image_base64_bytes": image_bytes,
        "engine_ms_median": round(statistics.median(direct), 2),
        "handler_ms_median": round(statistics.median(handled), 2),
        "overhead_ms_median": round(statistics.median(overheads), 2),
        "overhead_ms_p90": round(statistics.quantiles(overheads, n=10)[-1], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "worker_overhead.json")
    args = parser.parse_args()

    process, url = start_fake_engine()
    try:
        settings = WorkerSettings(a1111_url=url, progress_interval_s=1.0)  # type: ignore[arg-type]
        engine = A1111Client(url)
        runner = JobRunner(settings, engine)
        rows = [measure(runner, engine, images, args.rounds) for images in (1, 4)]
    finally:
        process.terminate()
        process.wait(timeout=10)

    per_extra_image = (rows[1]["overhead_ms_median"] - rows[0]["overhead_ms_median"]) / 3
    result = {
        "rows": rows,
        "overhead_per_extra_image_ms": round(per_extra_image, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pillow_image_imported": "PIL.Image" in sys.modules,
        "rounds": args.rounds,
    }
    header = (
        f"{'images':>6} {'b64 bytes':>10} {'engine ms':>10} {'handler ms':>11} {'overhead ms':>12} {'p90':>7}"
    )
    sys.stdout.write(header + "\n")
    for row in rows:
        sys.stdout.write(
            f"{row['images']:>6} {row['image_base64_bytes']:>10} {row['engine_ms_median']:>10} "
            f"{row['handler_ms_median']:>11} {row['overhead_ms_median']:>12} {row['overhead_ms_p90']:>7}\n"
        )
    sys.stdout.write(
        f"overhead per extra image: {result['overhead_per_extra_image_ms']} ms; "
        f"peak RSS: {result['peak_rss_mb']} MB; image decoded: {result['pillow_image_imported']}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
