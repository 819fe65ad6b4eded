"""The benches of the real A1111 run in their ``--smoke`` mode (CI runs the others: tests/deploy/test_benches.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import SKIPPED
from tests.support.real_a1111 import a1111_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bench", ["a1111_cold_start.py", "a1111_worker_overhead.py"])
def test_a1111_bench_runs_in_smoke_mode(bench: str) -> None:
    if a1111_dir() is None:
        pytest.skip("needs A1111_DIR: the bench launches its own A1111 through start.sh")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / bench), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert SKIPPED not in result.stdout
