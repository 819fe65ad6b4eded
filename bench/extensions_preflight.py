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

With ``--real`` the engine is the real A1111 v1.10.1 with both extensions instead, launched through start.sh
on the random-weight models (the environment of tests/a1111/test_extensions.py: ``A1111_DIR``,
``A1111_EXT_DIR``, ``A1111_EXT_MODELS``; full-size SD1.5, so under the big-memory lock), each job 64x64 in 2
steps. A generation there takes seconds and varies by more than the worker's cost, so the worker's own time is
also read from the job's ``timings_ms`` (``total`` minus ``generate``: validation, pre-flight, translation,
verification, output).

    python bench/extensions_preflight.py [--rounds 60] [--smoke]
    A1111_DIR=... A1111_EXT_DIR=... A1111_EXT_MODELS=... \\
        python bench/extensions_preflight.py --real --rounds 10

Target (docs/performance.md): < 5 ms above a plain txt2img job.
Writes bench/results/extensions_preflight.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
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
    """Two ControlNet units and one ADetailer unit (the detector that finds nothing: on the real A1111 it
    runs detection and leaves the image, so every round costs the same)."""
    unit = {"enabled": True, "module": "canny", "model": "control_rand_sd15", "image": image, "weight": 1.0}
    return {
        "controlnet": {"args": [unit, {**unit, "module": "invert", "weight": 0.5}]},
        "ADetailer": {"args": [True, False, {"ad_model": "face_rand.pt", "ad_confidence": 0.3}]},
    }


class Rounds:
    """One variant's rounds: handler - direct and the job's own ``total - generate`` (ms), output size."""

    def __init__(self) -> None:
        self.handler_minus_direct: list[float] = []
        self.worker_own: list[float] = []
        self.output_bytes = 0


def one_round(
    runner: JobRunner, engine: A1111Client, base: dict[str, Any], extra: dict[str, Any], *, trim: bool
) -> tuple[float, float, int]:
    """The same payload straight to the engine and as a job: (handler - direct ms, worker's own ms, bytes)."""
    job = {"prompt": "a portrait", "sampler_name": "Euler", "seed": 1, **base, **extra}
    payload = {**job, "send_images": True}
    kept = handler_module.trim_echoed_images
    if not trim:
        handler_module.trim_echoed_images = lambda parameters: parameters  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        engine.txt2img(payload, timeout_s=600)
        direct = time.perf_counter() - started
        started = time.perf_counter()
        output = runner.run({"id": "bench", "input": job})
        handled = time.perf_counter() - started
    finally:
        handler_module.trim_echoed_images = kept  # type: ignore[assignment]
    assert isinstance(output, dict) and "error" not in output, output
    timings = output["timings_ms"]
    return (handled - direct) * 1000, timings["total"] - timings["generate"], len(json.dumps(output))


def alternating(
    runner: JobRunner, engine: A1111Client, image: str, rounds: int, base: dict[str, Any], warm_up: int
) -> dict[str, Rounds]:
    """Plain, with the units (echo trimmed) and with the units (echo kept, the worker before the trim), one
    job of each in turn, so that the load of a shared machine shifts all three alike."""
    units = {"alwayson_scripts": scripts(image)}
    variants: dict[str, tuple[dict[str, Any], bool]] = {
        "plain": ({}, True),
        "scripts": (units, True),
        "scripts_echo_kept": (units, False),
    }
    results = {name: Rounds() for name in variants}
    for index in range(warm_up + rounds):
        for name, (extra, trim) in variants.items():
            minus_direct, own, size = one_round(runner, engine, base, extra, trim=trim)
            if index >= warm_up:
                results[name].handler_minus_direct.append(minus_direct)
                results[name].worker_own.append(own)
                results[name].output_bytes = size
    return results


def output_ms(engine: A1111Client, image: str, rounds: int, base: dict[str, Any]) -> tuple[float, float]:
    """In process, the least of ``rounds * 10`` tries (CPU only, so the minimum is the cost): the answer's
    ``parameters`` serialized as the job output carries them (``json.dumps``, as RunPod sends it), kept whole
    and trimmed (the trim included)."""
    payload = {
        "prompt": "a portrait",
        "sampler_name": "Euler",
        "seed": 1,
        **base,
        "alwayson_scripts": scripts(image),
    }
    parameters = engine.txt2img(payload, timeout_s=600)["parameters"]
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


def measured(
    runner: JobRunner, engine: A1111Client, image: str, rounds: int, base: dict[str, Any], warm_up: int
) -> dict[str, Any]:
    variants = alternating(runner, engine, image, rounds, base, warm_up)
    median = statistics.median
    result: dict[str, Any] = {}
    for name, found in variants.items():
        result[f"{name}_overhead_ms_median"] = round(median(found.handler_minus_direct), 2)
        result[f"{name}_worker_own_ms_median"] = round(median(found.worker_own), 2)
        result[f"{name}_output_bytes"] = found.output_bytes
    plain = variants["plain"]
    for name in ("scripts", "scripts_echo_kept"):
        found = variants[name]
        result[f"added_by_{name}_ms_median"] = round(
            median(found.handler_minus_direct) - median(plain.handler_minus_direct), 2
        )
        result[f"added_worker_own_by_{name}_ms_median"] = round(
            median(found.worker_own) - median(plain.worker_own), 2
        )
    result["pure_check_us"] = round(pure_check_us(engine, image, rounds), 1)
    kept_ms, trimmed_ms = output_ms(engine, image, rounds, base)
    result["parameters_to_json_echo_kept_ms"] = round(kept_ms, 2)
    result["parameters_to_json_trimmed_ms"] = round(trimmed_ms, 2)
    return result


def on_fake(image: str, rounds: int) -> dict[str, Any]:
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
            return measured(JobRunner(settings, engine), engine, image, rounds, {}, warm_up=5)
    finally:
        process.terminate()
        process.wait(10)


def on_real_a1111(image: str, rounds: int) -> dict[str, Any]:
    """The same rounds on the real A1111 with both extensions (module docstring)."""
    import tempfile

    from tests.support.real_a1111 import a1111_dir, launched
    from tests.support.real_a1111_extensions import extension_dirs, extension_env, prepared

    install, dirs = a1111_dir(), extension_dirs()
    if install is None or dirs is None:
        raise SystemExit("--real needs A1111_DIR, A1111_EXT_DIR and A1111_EXT_MODELS (docs/testing.md)")
    small = {"steps": 2, "width": 64, "height": 64}
    with tempfile.TemporaryDirectory(prefix="bench-ext-", dir=os.environ.get("TMPDIR")) as name:
        tmp = Path(name)
        models, _data = prepared(tmp, *dirs)
        env = extension_env(install, dirs[0], tmp, models)
        with launched(env, tmp / "start.log", timeout_s=900) as started, A1111Client(started.url) as engine:
            settings = WorkerSettings(a1111_url=started.url, job_timeout_s=600)  # type: ignore[arg-type]
            return measured(JobRunner(settings, engine), engine, image, rounds, small, warm_up=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--real", action="store_true", help="the real A1111 with both extensions")
    add_smoke_flag(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds = 5 if args.smoke else args.rounds
    image = control_image()
    engine = "real A1111 v1.10.1 + ControlNet + ADetailer (CPU)" if args.real else "fake A1111"
    result = {
        "engine": engine,
        "rounds": rounds,
        "control_image_base64_bytes": len(image),
        **(on_real_a1111(image, rounds) if args.real else on_fake(image, rounds)),
    }
    print(f"{'measure':44} value")
    for name, value in result.items():
        print(f"{name:44} {value}")
    name = "extensions_preflight_real.json" if args.real else "extensions_preflight.json"
    out = results_file(name, args.smoke)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
