"""The worker's own cost per job: handler wall time minus the engine's time, for 1 and 4 images.

The engine is the fake A1111 (tests/support/fake_a1111.py) in a separate process, answering every txt2img with
the same 512x512 PNG, so its time is pure HTTP + JSON. Each round runs the same payload twice, side by side:
once straight through ``A1111Client.txt2img`` (the engine's time as the worker sees it) and once through
``JobRunner.run`` (validation, pre-flight, translation, the same call, output shaping, size check). The
difference is the worker's overhead. Also reported: peak RSS of this (worker) process, and whether any image
was decoded (Pillow's Image module must never be imported on PNG pass-through).

    python bench/worker_overhead.py [--rounds 60]
    python bench/worker_overhead.py --volume-files 7 200 2000 [--rounds 60]
    python bench/worker_overhead.py --smoke     # both, tiny (CI)

Targets (docs/performance.md): median overhead < 5 ms per job, < 1 ms per extra image, peak RSS < 150 MB.

``--volume-files N...`` adds the model registry: a volume of N real (tiny) safetensors files, one
checkpoint and N-1 LoRAs, scanned once at "start-up" as the worker does, and a job naming the checkpoint and
two LoRAs (one with the registry's default weight). Per N it reports the overhead the same way, plus the
handler's time for a job naming a LoRA that does not exist (a registry miss: no engine call, the error comes
back) and the start-up scan. Target: < 3 ms median overhead at 2,000 files, independent of N.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import add_smoke_flag, results_file  # noqa: E402
from worker.a1111.client import A1111Client  # noqa: E402
from worker.handler import JobRunner  # noqa: E402
from worker.registry.hashing import hash_file  # noqa: E402
from worker.registry.models import Catalogue  # noqa: E402
from worker.registry.registry import ModelRegistry  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

LORA_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
CKPT_KEYS = (
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
)


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


WARM_UP = 5


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
    for index in range(rounds + WARM_UP):
        started = time.perf_counter()
        response = engine.txt2img(payload, timeout_s=30)
        direct_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        output = runner.run({"id": f"bench-{index}", "input": job_input})
        handled_ms = (time.perf_counter() - started) * 1000
        assert isinstance(output, dict) and "error" not in output, output
        assert output["images"] == response["images"]
        if index >= WARM_UP:
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


def make_volume(root: Path, files: int) -> dict[str, Any]:
    """One checkpoint and ``files - 1`` LoRAs (valid safetensors headers, a few KB each) under ``root``."""
    import numpy as np
    from safetensors.numpy import save_file

    (root / "checkpoints").mkdir(parents=True)
    (root / "loras").mkdir()
    ckpt = root / "checkpoints" / "bench-ckpt.safetensors"
    save_file(
        {CKPT_KEYS[0]: np.zeros((4, 768), np.float16), CKPT_KEYS[1]: np.zeros((2, 8), np.float16)}, ckpt
    )
    loras = []
    for index in range(files - 1):
        path = root / "loras" / f"lora-{index:05d}.safetensors"
        save_file({LORA_KEY: np.full((4, 768), index % 7, np.float16)}, path, metadata={"seed": str(index)})
        loras.append(path)
    sha = hash_file(ckpt).sha256
    # A1111 (hashing on, its default) reports each LoRA it applied under "Lora hashes", which the worker's
    # post-check requires: the fake reports the hashes it is given
    lora_hashes = {path.stem: hash_file(path).sha256[:12] for path in loras}
    return {
        "hashes": {"checkpoints": {}, "loras": lora_hashes, "embeddings": {}, "vae": {}},
        "checkpoints": [
            {
                "title": f"bench-ckpt.safetensors [{sha[:10]}]",
                "model_name": "bench-ckpt",
                "hash": sha[:8],
                "sha256": sha,
                "filename": str(ckpt),
                "config": None,
            }
        ],
        "loras": [{"name": p.stem, "alias": p.stem, "path": str(p), "metadata": {}} for p in loras],
    }


def set_fake_data(url: str, data: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{url}/__fake__/data", data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def measure_volume(url: str, files: int, rounds: int) -> dict[str, Any]:
    """Overhead of a job naming a checkpoint and two LoRAs, with the registry on a volume of ``files``."""
    with tempfile.TemporaryDirectory(prefix="bench-volume-") as tmp:
        root = Path(tmp) / "models"
        set_fake_data(url, make_volume(root, files))
        registry = ModelRegistry(
            models_dir=root,
            registry_path=root / "registry.json",
            catalogue=Catalogue(),
            allowed_hosts=(),
        )
        started = time.perf_counter()
        registry.warm()  # what worker.startup does while the engine boots
        scan_ms = (time.perf_counter() - started) * 1000
        settings = WorkerSettings(a1111_url=url, models_dir=root, progress_interval_s=1.0)  # type: ignore[arg-type]
        with A1111Client(url) as engine:
            runner = JobRunner(settings, engine, provider=registry)
            job_input = {
                "prompt": "a lighthouse at dusk",
                "checkpoint": "bench-ckpt",
                # the last two of the engine's list: the worst case for any lookup that scans the list
                "loras": [
                    {"name": f"lora-{files - 3:05d}", "weight": 0.5},
                    {"name": f"lora-{files - 2:05d}"},
                ],
                "sampler": "Euler a",
                "seed": 1,
            }
            first = runner.run({"id": "bench-first", "input": job_input})
            assert isinstance(first, dict) and "error" not in first, first
            payload = dict(engine_payload(first))
            direct, handled, misses, cpu = [], [], [], []
            for index in range(rounds + WARM_UP):
                started, cpu_started = time.perf_counter(), time.process_time()
                engine.txt2img(payload, timeout_s=30)
                direct_ms = (time.perf_counter() - started) * 1000
                direct_cpu_ms = (time.process_time() - cpu_started) * 1000
                started, cpu_started = time.perf_counter(), time.process_time()
                output = runner.run({"id": f"bench-{index}", "input": job_input})
                handled_ms = (time.perf_counter() - started) * 1000
                handled_cpu_ms = (time.process_time() - cpu_started) * 1000
                assert isinstance(output, dict) and "error" not in output, output
                started = time.perf_counter()
                missed = runner.run(
                    {"id": f"miss-{index}", "input": {**job_input, "loras": [{"name": "no-such"}]}}
                )
                miss_ms = (time.perf_counter() - started) * 1000
                assert isinstance(missed, dict) and missed["error"].startswith("model_not_found"), missed
                if index >= WARM_UP:
                    direct.append(direct_ms)
                    handled.append(handled_ms)
                    misses.append(miss_ms)
                    cpu.append(handled_cpu_ms - direct_cpu_ms)
            registry.flush_uses()
    overheads = [h - d for h, d in zip(handled, direct, strict=True)]
    return {
        "volume_files": files,
        "startup_scan_ms": round(scan_ms, 1),
        "engine_ms_median": round(statistics.median(direct), 2),
        "handler_ms_median": round(statistics.median(handled), 2),
        "overhead_ms_median": round(statistics.median(overheads), 2),
        "overhead_ms_p90": round(statistics.quantiles(overheads, n=10)[-1], 2),
        # CPU time of this process (the engine is another one): robust to other load on the machine
        "overhead_cpu_ms_median": round(statistics.median(cpu), 2),
        "miss_job_ms_median": round(statistics.median(misses), 2),
    }


def engine_payload(output: dict[str, Any]) -> dict[str, Any]:
    """The txt2img body the handler sent (A1111 echoes it as ``parameters``), for the direct calls."""
    parameters = output["parameters"]
    assert isinstance(parameters, dict) and parameters.get("prompt"), parameters
    return parameters


def main_volume(url: str, volumes: list[int], rounds: int, out: Path) -> None:
    rows = [measure_volume(url, files, rounds) for files in volumes]
    header = (
        f"{'files':>6} {'scan ms':>9} {'engine ms':>10} {'handler ms':>11} {'overhead ms':>12} {'p90':>7} "
        f"{'overhead cpu ms':>16} {'miss job ms':>12}"
    )
    sys.stdout.write(header + "\n")
    for row in rows:
        sys.stdout.write(
            f"{row['volume_files']:>6} {row['startup_scan_ms']:>9} {row['engine_ms_median']:>10} "
            f"{row['handler_ms_median']:>11} {row['overhead_ms_median']:>12} {row['overhead_ms_p90']:>7} "
            f"{row['overhead_cpu_ms_median']:>16} {row['miss_job_ms_median']:>12}\n"
        )
    result = {
        "rows": rows,
        "rounds": rounds,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    sys.stdout.write(f"peak RSS: {result['peak_rss_mb']} MB\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    global WARM_UP
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--volume-files", type=int, nargs="+", metavar="N", help="volume sizes to measure")
    parser.add_argument("--out", type=Path, default=None)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    logging.getLogger("worker").setLevel(logging.ERROR)  # the miss jobs' warnings are expected
    if args.volume_files and min(args.volume_files) < 3:
        parser.error("--volume-files needs at least 3 files (a checkpoint and two LoRAs)")
    if args.smoke:
        WARM_UP, args.rounds = 1, 2
    process, url = start_fake_engine()
    try:
        if args.volume_files or args.smoke:
            out = args.out or results_file("worker_overhead_volume.json", args.smoke)
            main_volume(url, args.volume_files or [5], args.rounds, out)
        if not args.volume_files:
            main_plain(url, args.rounds, args.out or results_file("worker_overhead.json", args.smoke))
    finally:
        process.terminate()
        process.wait(timeout=10)
    return 0


def main_plain(url: str, rounds: int, out: Path) -> None:
    settings = WorkerSettings(a1111_url=url, progress_interval_s=1.0)  # type: ignore[arg-type]
    with A1111Client(url) as engine:
        runner = JobRunner(settings, engine)
        rows = [measure(runner, engine, images, rounds) for images in (1, 4)]
    per_extra_image = (rows[1]["overhead_ms_median"] - rows[0]["overhead_ms_median"]) / 3
    result = {
        "rows": rows,
        "overhead_per_extra_image_ms": round(per_extra_image, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pillow_image_imported": "PIL.Image" in sys.modules,
        "rounds": rounds,
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
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
