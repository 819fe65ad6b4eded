"""The worker's own cost of an img2img job with a 1024x1024 PNG input, against txt2img's; and its peak memory
while checking a 4096x4096 input.

The engine is the fake A1111 (tests/support/fake_a1111.py) in a separate process. Each round sends,
alternating, the same img2img payload straight through ``A1111Client.img2img`` (the engine's time as the
worker sees it) and the job through ``JobRunner.run`` (validation, the image check, pre-flight, translation,
the same call, the post-check, output); then the same pair for txt2img. The difference per pair is the
worker's overhead; the img2img figure minus the txt2img one is what the input image costs the worker.

Memory: a fresh interpreter holds a job input with a 4096x4096 PNG (base64, as RunPod hands it over), resets
its peak RSS (``/proc/self/clear_refs``), then checks it as a job would; the peak above that idle RSS is
reported (``VmHWM``).

    python bench/img2img_overhead.py [--rounds 40]
    python bench/img2img_overhead.py --smoke        # one round, small images: CI keeps the bench runnable

Targets (docs/performance.md): img2img overhead < 5 ms above txt2img's; < 150 MB above idle for 4096x4096.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worker_overhead import start_fake_engine  # noqa: E402
from worker.a1111.client import A1111Client  # noqa: E402
from worker.handler import JobRunner  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "img2img_overhead.json"
JOB = {"prompt": "a lighthouse at dusk", "sampler": "Euler a", "seed": 1, "width": 512, "height": 512}
_MEMORY_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from worker.input_images.check import ImageLimits, check_image

def status_kb(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))

job = {"init_images": [open(sys.argv[2]).read()]}
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak (VmHWM) to what is resident now: the job input in hand
idle = status_kb("VmRSS:")
checked = check_image(job["init_images"][0], "init_images[0]", ImageLimits(60_000_000, 4096 * 4096))
print(json.dumps({"idle_kb": idle, "peak_kb": status_kb("VmHWM:"), "bytes": checked.byte_count}))
"""


def photo_png(side: int) -> bytes:
    """A photo-like PNG (smooth shapes and sensor noise): it compresses about as a real photo does."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(side)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(4 * (x * y) + 1)], axis=-1)
    pixels = (127 + 100 * base + rng.normal(0, 6, (side, side, 3))).clip(0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def pair(
    runner: JobRunner, call: Any, payload: dict[str, Any], job: dict[str, Any], index: int
) -> tuple[float, float]:
    """One direct call and one job, back to back: the job's extra milliseconds, wall and CPU."""
    started, cpu = time.perf_counter(), time.process_time()
    call(payload, timeout_s=60)
    direct_ms = (time.perf_counter() - started) * 1000
    direct_cpu_ms = (time.process_time() - cpu) * 1000
    started, cpu = time.perf_counter(), time.process_time()
    output = runner.run({"id": f"bench-{index}", "input": job})
    handled_ms = (time.perf_counter() - started) * 1000
    handled_cpu_ms = (time.process_time() - cpu) * 1000
    assert isinstance(output, dict) and "error" not in output, output
    return handled_ms - direct_ms, handled_cpu_ms - direct_cpu_ms


def measure_overhead(url: str, side: int, rounds: int) -> dict[str, Any]:
    init = base64.b64encode(photo_png(side)).decode("ascii")
    settings = WorkerSettings(a1111_url=url, progress_interval_s=1.0)  # type: ignore[arg-type]
    with A1111Client(url) as engine:
        runner = JobRunner(settings, engine)
        sent: dict[str, dict[str, Any]] = {}
        for kind, call in (("txt2img", engine.txt2img), ("img2img", engine.img2img)):

            def spy(payload: dict[str, Any], *, timeout_s: float, kind: str = kind, call: Any = call) -> Any:
                sent[kind] = payload
                return call(payload, timeout_s=timeout_s)

            setattr(engine, kind, spy)
        img2img_job = {**JOB, "init_images": [init], "denoising_strength": 0.5}
        for job in (JOB, img2img_job):  # the exact payloads the worker sends, for the direct calls
            first = runner.run({"id": "bench-first", "input": job})
            assert isinstance(first, dict) and "error" not in first, first
        overheads: dict[str, list[tuple[float, float]]] = {"txt2img": [], "img2img": []}
        for index in range(rounds + 3):  # the first 3 are warm-up
            for kind, job in (("txt2img", JOB), ("img2img", img2img_job)):
                extra = pair(runner, getattr(A1111Client, kind).__get__(engine), sent[kind], job, index)
                if index >= 3:
                    overheads[kind].append(extra)
    wall = {kind: statistics.median(w for w, _ in values) for kind, values in overheads.items()}
    cpu = {kind: statistics.median(c for _, c in values) for kind, values in overheads.items()}
    return {
        "input_side": side,
        "input_png_bytes": len(base64.b64decode(init)),
        "rounds": rounds,
        "txt2img_overhead_ms_median": round(wall["txt2img"], 2),
        "img2img_overhead_ms_median": round(wall["img2img"], 2),
        "img2img_above_txt2img_ms": round(wall["img2img"] - wall["txt2img"], 2),
        "txt2img_overhead_cpu_ms_median": round(cpu["txt2img"], 2),
        "img2img_overhead_cpu_ms_median": round(cpu["img2img"], 2),
        "img2img_above_txt2img_cpu_ms": round(cpu["img2img"] - cpu["txt2img"], 2),
    }


def measure_memory(side: int, tmp: Path) -> dict[str, Any]:
    source = tmp / f"input-{side}.b64"
    source.write_text(base64.b64encode(photo_png(side)).decode("ascii"))
    probe = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(ROOT), str(source)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(probe.stdout)
    return {
        "input_side": side,
        "input_png_bytes": found["bytes"],
        "idle_rss_mb": round(found["idle_kb"] / 1024, 1),
        "peak_rss_mb": round(found["peak_kb"] / 1024, 1),
        "above_idle_mb": round((found["peak_kb"] - found["idle_kb"]) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="one round, 64x64 and 256x256 inputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    side, memory_side, rounds = (64, 256, 1) if args.smoke else (1024, 4096, args.rounds)
    process, url = start_fake_engine()
    try:
        overhead = measure_overhead(url, side, rounds)
    finally:
        process.terminate()
        process.wait(timeout=10)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-img2img-") as tmp:
        memory = measure_memory(memory_side, Path(tmp))
    rows = (
        ("txt2img", "txt2img_overhead_ms_median", "txt2img_overhead_cpu_ms_median"),
        ("img2img", "img2img_overhead_ms_median", "img2img_overhead_cpu_ms_median"),
        ("img2img - txt2img", "img2img_above_txt2img_ms", "img2img_above_txt2img_cpu_ms"),
    )
    print(f"{'worker overhead per job':26}{'wall ms':>10}{'CPU ms':>10}  (medians)")
    for label, wall_key, cpu_key in rows:
        print(f"{label:26}{overhead[wall_key]:>10}{overhead[cpu_key]:>10}")
    print(f"input {side}x{side} PNG: {overhead['input_png_bytes']:,} bytes, {rounds} rounds")
    print(
        f"checking a {memory_side}x{memory_side} PNG ({memory['input_png_bytes']:,} bytes): peak RSS "
        f"{memory['peak_rss_mb']} MB, {memory['above_idle_mb']} MB above idle"
    )
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"overhead": overhead, "memory": memory}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
