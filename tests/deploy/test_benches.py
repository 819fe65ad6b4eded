"""Every script under bench/ still runs: each in its ``--smoke`` mode (tiny sizes, one round), all at once.

Nothing else runs the benchmarks, so without this a bench rots unseen (worker_overhead.py once failed every
job, unnoticed). The numbers of a smoke run mean nothing and are not checked; a bench that needs a real A1111
says why it skipped, after parsing its arguments and importing everything it uses.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.common import SKIPPED

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "common.py")
#: benches that measure the real A1111: CI has none, so their smoke run skips (run with it: tests/a1111)
NEEDS_A1111 = {
    "a1111_cold_start.py",
    "a1111_worker_overhead.py",
    "container_cold_start.py",  # and the built image
    "container_extensions_cold_start.py",  # the built image alone
    "extensions_cold_start.py",  # and the extensions' venv
}
#: benches of the embedded engine: they need the engine extra (torch)
NEEDS_TORCH = {
    "convert.py",
    "engine_cold_start.py",
    "engine_overhead.py",
    "engine_vs_a1111.py",
    "load_memory.py",
}
HAS_TORCH = importlib.util.find_spec("torch") is not None
TIMEOUT_S = 600


def test_every_bench_is_classified() -> None:
    names = {p.name for p in BENCHES}
    assert names >= NEEDS_A1111 | NEEDS_TORCH  # a renamed bench must be renamed here too


@pytest.mark.timeout(TIMEOUT_S + 60)  # ~1 min on a quiet 2-core machine; several when it is shared
def test_every_bench_runs_in_smoke_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("A1111_DIR", "A1111_URL", "A1111_PYTHON")}
    benches = [p for p in BENCHES if HAS_TORCH or p.name not in NEEDS_TORCH]
    running = {}
    for bench in benches:  # all at once: most of each is a process start and imports
        log = (tmp_path / f"{bench.stem}.log").open("w")
        running[bench.name] = subprocess.Popen(
            [sys.executable, str(bench), "--smoke"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its servers too are stopped if it overruns
        )
    deadline = time.monotonic() + TIMEOUT_S
    failures = []
    try:
        for name, process in running.items():
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            output = (tmp_path / f"{Path(name).stem}.log").read_text(errors="replace")
            skipped = SKIPPED in output
            if code != 0 or skipped != (name in NEEDS_A1111):
                failures.append(f"{name}: exit {code}, skipped {skipped}\n{output[-2000:]}")
    finally:
        for process in running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert failures == [], "\n\n".join(failures)
    if not HAS_TORCH:
        pytest.skip(f"torch is not installed: {', '.join(sorted(NEEDS_TORCH))} not run")
