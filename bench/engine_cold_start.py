"""Cold start of the product on the embedded engine: what ``make run`` does, timed phase by phase.

Each run launches ``start.sh`` in ``local`` mode with ``WORKER_ENGINE=embedded`` on the tiny demo models
(written once, before the first run, as ``make run`` does on a first start) and reads the worker's start-up
timeline: seconds from the engine process's start to its port answering (``port_open``), to the warm-up done
and the worker ready; and the CPU seconds the engine process spent until then (robust to other load on the
machine, unlike the wall times). Then SIGTERM. Also timed, alternating with the runs: ``import
diffusers_server.app`` in a fresh interpreter, what an engine start imports before it can open its port.

    python bench/engine_cold_start.py [--runs 5]

Target (docs/performance.md): engine process start → ready under 5 s on the 2-core development machine.
``A1111_TEST_PORTS=FIRST-LAST`` keeps the ports in a range.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import add_smoke_flag, results_file  # noqa: E402
from tests.support.real_a1111 import free_port  # noqa: E402

PHASES = ("port_open", "model_loaded", "warmed_up", "ready", "engine_cpu_s")
TIMELINE = re.compile(r"start-up timeline: (.*)")


def two_ports() -> tuple[int, int]:
    """The engine's port and the local API's, both in ``A1111_TEST_PORTS`` when it is set."""
    engine = free_port(engine=True)
    wanted = os.environ.get("A1111_TEST_PORTS", "").strip()
    if not wanted:
        return engine, free_port()
    os.environ["A1111_TEST_PORTS"] = f"{engine + 1}-{wanted.partition('-')[2] or engine + 1}"
    try:
        return engine, free_port(engine=True)
    finally:
        os.environ["A1111_TEST_PORTS"] = wanted


def one_run(models: Path, tmp: Path, timeout_s: float) -> dict[str, float]:
    """Seconds from the engine's start to each phase of the worker's timeline."""
    engine_port, api_port = two_ports()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "WORKER_MODE": "local",
        "WORKER_ENGINE": "embedded",
        "WORKER_MODELS_DIR": str(models),
        "WORKER_ENGINE_PORT": str(engine_port),
        "WORKER_LOCAL_API_PORT": str(api_port),
        "WORKER_ENGINE_PID_FILE": str(tmp / "engine.pid"),
        "WORKER_LOG_FORMAT": "text",
    }
    log_path = tmp / "start.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(ROOT / "start.sh")],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            found = TIMELINE.search(log_path.read_text(errors="replace"))
            if found:
                # CPU seconds the engine spent until ready: unlike wall time, other load barely moves it
                engine = psutil.Process(int((tmp / "engine.pid").read_text()))
                cpu = engine.cpu_times()
                return {**_phases(found.group(1)), "engine_cpu_s": round(cpu.user + cpu.system, 2)}
            time.sleep(0.1)
        raise RuntimeError(f"no start-up timeline within {timeout_s} s; log:\n{log_path.read_text()[-3000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _phases(summary: str) -> dict[str, float]:
    """``"engine_process_start 0.0s → port_open 3.1s → ..."`` → ``{"port_open": 3.1, ...}``."""
    marks = dict(part.strip().rsplit(" ", 1) for part in summary.split("→"))
    if "engine_process_start" not in marks:
        raise RuntimeError(f"the timeline does not start at the engine's start: {summary}")
    return {phase: float(marks[phase].rstrip("s")) for phase in PHASES if phase in marks}


def import_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import diffusers_server.app"], cwd=ROOT, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a start may take")
    parser.add_argument("--out", type=Path, default=None)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    runs = 1 if args.smoke else args.runs
    rows: list[dict[str, float]] = []
    imports: list[float] = []
    with tempfile.TemporaryDirectory(prefix="engine-cold-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        subprocess.run(
            [sys.executable, "-m", "diffusers_server", "make-demo-models", str(models)], check=True
        )
        for _ in range(runs):
            imports.append(import_seconds())
            rows.append(one_run(models, tmp, args.timeout))
    medians = {
        phase: round(statistics.median(r[phase] for r in rows), 2) for phase in PHASES if phase in rows[0]
    }
    result = {
        "runs": rows,
        "median_s": medians,
        "import_diffusers_server_app_s": round(statistics.median(imports), 2),
        "load_average": os.getloadavg()[0],
    }
    sys.stdout.write(f"{'phase':<14} {'median s':>9}  runs\n")
    for phase, median in medians.items():
        sys.stdout.write(f"{phase:<14} {median:>9}  {' '.join(f'{r[phase]:.1f}' for r in rows)}\n")
    sys.stdout.write(f"import diffusers_server.app: {result['import_diffusers_server_app_s']} s (median)\n")
    out = args.out or results_file("engine_cold_start.json", args.smoke)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
