"""The worker's cost per job on the real A1111: ``JobRunner.run`` minus the same txt2img sent to A1111 itself.

A1111 v1.10.1 is launched by start.sh (``WORKER_ENGINE=a1111``, CPU) on the tiny models of
scripts/a1111_test_models.py. The worker's own payload for the job is captured once, then each round sends it
straight through ``A1111Client.txt2img`` and runs the job through the handler, alternately, so both sides see
the same engine state. The difference is what the worker adds: validation, pre-flight against the cached
lists, translation, the post-generation checks (with a ``/progress`` round trip where others can interrupt
A1111), the progress relay thread and output shaping. On a busy machine the engine's own variance (seconds)
swamps that difference, so the table also gives the worker's stages as it times them inside each job
(``timings_ms``: total minus generate).

    A1111_DIR=... [A1111_PYTHON=...] python bench/a1111_worker_overhead.py [--rounds 30]

Each job runs through two workers, alternating: one deployed as start.sh deploys it by default (A1111 on the
loopback: only the worker can interrupt it, so it reads no ``/progress`` after a job) and one with the engine
exposed (``WORKER_EXPOSE_ENGINE=1``: someone else could interrupt it, so it asks). ``--smoke``: one job, two
rounds; without A1111 it says why and exits 0.
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

from bench.common import add_smoke_flag, results_file, skip_smoke  # noqa: E402
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


def measure(
    runners: dict[str, JobRunner], engine: A1111Client, job_input: dict[str, Any], rounds: int, warm_up: int
) -> list[dict[str, Any]]:
    """Per runner: the job through it against the same payload sent straight to A1111, call by call."""
    payload = captured_payload(next(iter(runners.values())), job_input)
    direct: list[float] = []
    handled: dict[str, list[float]] = {name: [] for name in runners}
    own: dict[str, list[float]] = {name: [] for name in runners}
    verify: dict[str, list[float]] = {name: [] for name in runners}
    for index in range(rounds + warm_up):
        started = time.perf_counter()
        engine.txt2img(payload, timeout_s=300)
        direct_ms = (time.perf_counter() - started) * 1000
        for name, runner in runners.items():
            started = time.perf_counter()
            output = runner.run({"id": f"bench-{index}", "input": job_input})
            handled_ms = (time.perf_counter() - started) * 1000
            assert isinstance(output, dict) and "error" not in output, output
            if index >= warm_up:
                handled[name].append(handled_ms)
                timings = output["timings_ms"]
                own[name].append(timings["total"] - timings["generate"])
                verify[name].append(timings["verify"])
        if index >= warm_up:
            direct.append(direct_ms)
    job = (
        f"{job_input['width']}x{job_input['height']}, {job_input['steps']} steps, "
        f"{job_input.get('batch_size', 1)} image(s)"
    )
    rows = []
    for name in runners:
        overheads = [h - d for h, d in zip(handled[name], direct, strict=True)]
        rows.append(
            {
                "job": job,
                "engine": name,
                "engine_ms_median": round(statistics.median(direct), 1),
                "handler_ms_median": round(statistics.median(handled[name]), 1),
                "overhead_ms_median": round(statistics.median(overheads), 1),
                "overhead_ms_p10_p90": [round(q, 1) for q in statistics.quantiles(overheads, n=10)[::8]],
                "ratio_median": round(statistics.median(handled[name]) / statistics.median(direct), 3),
                # The worker's own stages, timed inside the job: robust to the engine's variance.
                "own_stages_ms_median": round(statistics.median(own[name]), 2),
                "verify_ms_median": round(statistics.median(verify[name]), 2),
            }
        )
    return rows


JOBS: list[dict[str, Any]] = [
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
#: how the worker is deployed: A1111 launched by start.sh on the loopback (only the worker can interrupt it,
#: so no /progress after a job), or an engine others can reach (exposed, or external: it asks /progress)
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "a1111 private": {"engine": "a1111"},
    "a1111 exposed": {"engine": "a1111", "expose_engine": True},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=len(JOBS), help="how many of the jobs (the first N)")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    install = a1111_dir()
    if install is None:
        reason = "set A1111_DIR (and A1111_PYTHON) to an A1111 v1.10.1 install; see docs/testing.md"
        if args.smoke:
            return skip_smoke(reason)
        parser.error(reason)
    rounds, warm_up, jobs = (2, 1, JOBS[:1]) if args.smoke else (args.rounds, 3, JOBS[: args.jobs])
    rows = []
    with tempfile.TemporaryDirectory(prefix="a1111-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = volume_with_tiny_models(install, tmp / "models")
        with launched(start_env(install, tmp, models), tmp / "start.log") as started:
            engine = A1111Client(started.url, request_timeout_s=60)
            runners = {}
            for name, deployment in DEPLOYMENTS.items():
                fields = {"a1111_url": started.url, "models_dir": models, "job_timeout_s": 300, **deployment}
                settings = WorkerSettings.model_validate(fields)
                client = A1111Client(started.url, request_timeout_s=60)
                runners[name] = JobRunner(settings, client, provider=ModelRegistry.from_settings(settings))
            for job in jobs:
                rows += measure(runners, engine, job, rounds, warm_up)
                print(json.dumps(rows[-len(runners) :]), flush=True)  # a cut-short run still reports
    header = (
        "job",
        "deployment",
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
        cells = [row["job"], row["engine"], row["engine_ms_median"], row["handler_ms_median"]]
        tail = [row["overhead_ms_median"], f"{low}..{high}", row["ratio_median"], row["own_stages_ms_median"]]
        print(" | ".join(str(cell) for cell in [*cells, *tail, row["verify_ms_median"]]))
    out = results_file("a1111_worker_overhead.json", args.smoke)
    out.write_text(json.dumps({"rounds": rounds, "rows": rows}, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
