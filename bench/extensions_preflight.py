"""The worker's added cost for a job with two ControlNet units and one ADetailer unit (``alwayson_scripts``).

The engine is the fake A1111 (tests/support/fake_a1111.py) in a separate process, serving the listings the
real A1111 with both extensions answered (tests/fixtures/a1111/extensions.json). Each round sends the same
payload straight through ``A1111Client.txt2img`` and as a job through ``JobRunner.run``, once without
``alwayson_scripts`` and once with them (each unit carrying a 512x512 control image); the worker's overhead is
handler minus direct, and the scripts' cost is the difference between the two overheads. The job with the
units runs twice: as the worker is (the control images A1111 echoes in ``parameters`` replaced by
placeholders, ``worker.output.echo``) and with the echo kept whole (the trim patched out: the worker before
it). The three jobs take turns, one of each per round, so the load of a shared machine shifts them alike; the
size of each job's output is reported too. Also, in process: the pure check (``check_alwayson_scripts`` on the
cached lists), and the answer's ``parameters`` turned into JSON with the echo kept and trimmed.

    python bench/extensions_preflight.py [--rounds 60] [--smoke]

Target (docs/performance.md): < 5 ms above a plain txt2img job.
Writes bench/results/extensions_preflight.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import add_smoke_flag, results_file  # noqa: E402
from bench.worker_overhead import set_fake_data, start_fake_engine  # noqa: E402
from worker import handler as handler_module  # noqa: E402
from worker.a1111.client import A1111Client  # noqa: E402
from worker.handler import JobRunner  # noqa: E402
from worker.preflight.scripts import ScriptContext, check_alwayson_scripts  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

RECORDED = json.loads((ROOT / "tests" / "fixtures" / "a1111" / "extensions.json").read_text())


def control_image() -> str:
    """A 512x512 PNG of noise (incompressible: the size a real control image has on the wire)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def scripts(image: str) -> dict[str, Any]:
    unit = {"enabled": True, "module": "canny", "model": "control_rand_sd15", "image": image, "weight": 1.0}
    return {
        "controlnet": {"args": [unit, {**unit, "module": "invert", "weight": 0.5}]},
        "ADetailer": {"args": [True, False, {"ad_model": "face_always.pt", "ad_confidence": 0.3}]},
    }


def overhead(
    runner: JobRunner,
    engine: A1111Client,
    extra: dict[str, Any],
    rounds: int,
    *,
    trim: bool = True,
    warmup: int = 5,
) -> tuple[list[float], int]:
    """(handler - direct in ms per round after the warm-up rounds, the job output's JSON size in bytes)."""
    job = {"prompt": "a portrait", "sampler_name": "Euler", "seed": 1, **extra}
    payload = {"prompt": "a portrait", "sampler_name": "Euler", "seed": 1, "send_images": True, **extra}
    result = []
    size = 0
    kept = handler_module.trim_echoed_images
    if not trim:
        handler_module.trim_echoed_images = lambda parameters: parameters  # type: ignore[assignment]
    try:
        for index in range(rounds + warmup):
            started = time.perf_counter()
            engine.txt2img(payload, timeout_s=30)
            direct = time.perf_counter() - started
            started = time.perf_counter()
            output = runner.run({"id": f"bench-{index}", "input": job})
            handled = time.perf_counter() - started
            assert isinstance(output, dict) and "error" not in output, output
            size = len(json.dumps(output))
            if index >= warmup:
                result.append((handled - direct) * 1000)
    finally:
        handler_module.trim_echoed_images = kept  # type: ignore[assignment]
    return result, size


def alternating(
    runner: JobRunner, engine: A1111Client, scripts_extra: dict[str, Any], rounds: int
) -> dict[str, tuple[list[float], int]]:
    """Plain, with the units (echo trimmed) and with the units (echo kept), one job of each in turn, so that
    the load of a shared machine shifts all three alike: {variant: (overheads in ms, output bytes)}."""
    variants: dict[str, tuple[dict[str, Any], bool]] = {
        "plain": ({}, True),
        "scripts": (scripts_extra, True),
        "scripts_echo_kept": (scripts_extra, False),
    }
    results: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in variants}
    for extra, _trim in variants.values():
        overhead(runner, engine, extra, 0)  # 5 warm-up rounds each
    for _ in range(rounds):
        for name, (extra, trim) in variants.items():
            times, size = overhead(runner, engine, extra, 1, trim=trim, warmup=0)
            results[name] = (results[name][0] + times, size)
    return results


def output_ms(engine: A1111Client, image: str, rounds: int) -> tuple[float, float]:
    """In process, the least of ``rounds * 10`` tries (CPU only, so the minimum is the cost): the answer's
    ``parameters`` serialized as the job output carries them (``json.dumps``, as RunPod sends it), kept whole
    and trimmed (the trim included)."""
    payload = {"prompt": "a portrait", "sampler_name": "Euler", "seed": 1, "alwayson_scripts": scripts(image)}
    parameters = engine.txt2img(payload, timeout_s=30)["parameters"]
    kept, trimmed = [], []
    for _ in range(rounds * 10):
        started = time.perf_counter()
        json.dumps(parameters)
        kept.append(time.perf_counter() - started)
        started = time.perf_counter()
        json.dumps(handler_module.trim_echoed_images(parameters))
        trimmed.append(time.perf_counter() - started)
    return min(kept) * 1000, min(trimmed) * 1000


def pure_check_us(engine: A1111Client, image: str, rounds: int) -> float:
    context = ScriptContext()  # txt2img; no registry facts: the checks on the engine's lists
    engine.extensions()  # cached, as in a running worker
    started = time.perf_counter()
    for _ in range(rounds * 10):
        check_alwayson_scripts(scripts(image), engine, context)
    return (time.perf_counter() - started) / (rounds * 10) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    add_smoke_flag(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds = 5 if args.smoke else args.rounds
    image = control_image()
    process, url = start_fake_engine()
    try:
        listings = RECORDED["listings"]
        set_fake_data(
            url,
            {
                "scripts": listings["/sdapi/v1/scripts"],
                "extension_routes": {k: v for k, v in listings.items() if not k.startswith("/sdapi/")},
            },
        )
        settings = WorkerSettings(a1111_url=url, progress_interval_s=1.0)  # type: ignore[arg-type]
        with A1111Client(url) as engine:
            runner = JobRunner(settings, engine)
            measured = alternating(runner, engine, {"alwayson_scripts": scripts(image)}, rounds)
            check_us = pure_check_us(engine, image, rounds)
            echo_kept_ms, echo_trimmed_ms = output_ms(engine, image, rounds)
    finally:
        process.terminate()
        process.wait(10)
    medians = {name: statistics.median(times) for name, (times, _size) in measured.items()}
    result: dict[str, Any] = {"rounds": rounds, "control_image_base64_bytes": len(image)}
    for name, median in medians.items():
        result[f"{name}_overhead_ms_median"] = round(median, 2)
    for name in ("scripts", "scripts_echo_kept"):
        result[f"added_by_{name}_ms_median"] = round(medians[name] - medians["plain"], 2)
    for name, (_times, size) in measured.items():
        result[f"{name}_output_bytes"] = size
    result["pure_check_us"] = round(check_us, 1)
    result["parameters_to_json_echo_kept_ms"] = round(echo_kept_ms, 2)
    result["parameters_to_json_trimmed_ms"] = round(echo_trimmed_ms, 2)
    print(f"{'measure':40} value")
    for name, value in result.items():
        print(f"{name:40} {value}")
    out = results_file("extensions_preflight.json", args.smoke)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
