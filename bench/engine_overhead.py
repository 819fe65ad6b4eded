"""Embedded engine overhead: HTTP server vs. the same diffusers pipeline called in-process.

Measures, on the tiny random-weight SD1.5 demo model:
- median txt2img wall time over HTTP vs. in-process ``pipe(...)`` with the same settings, at 64x64 and 512x512
  (alternated call by call after a warm-up, so
  load from other processes hits both sides alike), and their ratio (target <= 1.10 at 512x512);
- cold start: ``python -m diffusers_server serve`` spawn → first image returned;
- server RSS when idle (ready, before any request) and after the benchmark.

Usage: python bench/engine_overhead.py [--runs 10] [--threads 2]   (--smoke: 64x64 only, one run; CI)
Writes bench/results/engine_overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"

from diffusers import EulerAncestralDiscreteScheduler  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

from bench.common import add_smoke_flag, results_file  # noqa: E402
from diffusers_server.demo_models import SD15_NAME, make_demo_models  # noqa: E402
from diffusers_server.models.pipelines import Runtime, load_checkpoint  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse"
NEGATIVE = "blurry"
PAUSE_S = 0.3
CASES = ({"size": 64, "steps": 4}, {"size": 512, "steps": 4})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(models: Path, threads: int) -> tuple[subprocess.Popen[bytes], str, float, float]:
    """Spawn the server; return it, its URL, seconds to first image and idle RSS (before any request)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "diffusers_server",
        "serve",
        "--models-dir",
        str(models),
        "--port",
        str(port),
    ]
    cmd += ["--threads", str(threads), "--cpu", "--log-level", "warning"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = started + 120
    while time.perf_counter() < deadline:
        try:  # the port opens before the model loads: idle means loaded, before any request
            if httpx.get(f"{url}/worker/v1/health", timeout=2).json().get("status") == "ready":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    else:
        proc.kill()
        raise TimeoutError("server did not start")
    idle_rss = psutil.Process(proc.pid).memory_info().rss
    body = {"prompt": PROMPT, "steps": 1, "width": 64, "height": 64, "seed": 1}
    response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    response.raise_for_status()
    return proc, url, time.perf_counter() - started, idle_rss


def _alternate(
    runs: int, first: Callable[[], None], second: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """Alternate the two sides call by call (after one uncounted warm-up each), so load from other processes
    on a shared machine hits both alike; a short pause lets the other side's OpenMP threads go idle."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(runs + 1):
        for side, call in enumerate((first, second)):
            time.sleep(PAUSE_S)
            started = time.perf_counter()
            call()
            if i:
                times[side].append(time.perf_counter() - started)
    return times


def _over_http(client: httpx.Client, body: dict[str, Any]) -> None:
    client.post("/sdapi/v1/txt2img", json=body).raise_for_status()


def _in_process(pipe: Any, size: int, steps: int) -> None:
    """The baseline: the same pipeline and settings, PNG-encoded like the server's output."""
    with torch.inference_mode():
        image = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=steps,
            width=size,
            height=size,
            guidance_scale=7.0,
            generator=torch.Generator("cpu").manual_seed(1),
        ).images[0]
    image.save(io.BytesIO(), format="PNG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    add_smoke_flag(parser)
    args = parser.parse_args()
    cases = CASES[:1] if args.smoke else CASES
    if args.smoke:
        args.runs = 1
    torch.set_num_threads(args.threads)
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()

    models = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    make_demo_models(models)
    proc, url, cold_start_s, idle_rss = start_server(models, args.threads)
    model = load_checkpoint(
        models / "checkpoints" / f"{SD15_NAME}.safetensors",
        Runtime("cpu", torch.float32, False),
        Path(tempfile.mkdtemp()),
        None,
    )
    pipe = model.pipe
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    results: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            for case in cases:
                size, steps = case["size"], case["steps"]
                body = {
                    "prompt": PROMPT,
                    "negative_prompt": NEGATIVE,
                    "steps": steps,
                    "width": size,
                    "height": size,
                    "seed": 1,
                    "sampler_name": "Euler a",
                    "cfg_scale": 7,
                }
                in_process, server = _alternate(
                    args.runs,
                    functools.partial(_in_process, pipe, size, steps),
                    functools.partial(_over_http, client, body),
                )
                med_in, med_srv = statistics.median(in_process), statistics.median(server)
                results.append(
                    {
                        "size": size,
                        "steps": steps,
                        "runs": args.runs,
                        "in_process_median_ms": round(med_in * 1000, 1),
                        "server_median_ms": round(med_srv * 1000, 1),
                        "overhead_ms": round((med_srv - med_in) * 1000, 1),
                        "ratio": round(med_srv / med_in, 3),
                    }
                )
        final_rss = psutil.Process(proc.pid).memory_info().rss
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    report = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__},
        "cases": results,
        "cold_start_to_first_image_s": round(cold_start_s, 2),
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "rss_after_bench_mb": round(final_rss / 2**20, 1),
    }
    out = results_file("engine_overhead.json", args.smoke)
    out.write_text(json.dumps(report, indent=2))
    print(
        f"{'size':>6} {'steps':>5} {'in-process ms':>14} {'server ms':>10} {'overhead ms':>12} {'ratio':>6}"
    )
    for r in results:
        print(
            f"{r['size']:>6} {r['steps']:>5} {r['in_process_median_ms']:>14} {r['server_median_ms']:>10} "
            f"{r['overhead_ms']:>12} {r['ratio']:>6}"
        )
    print(f"cold start to first image: {report['cold_start_to_first_image_s']} s")
    print(f"server RSS idle: {report['idle_rss_mb']} MB; after bench: {report['rss_after_bench_mb']} MB")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
