"""What the scripts under bench/ share: the ``--smoke`` mode and where results are written.

``--smoke`` runs a bench tiny (the demo models, small sizes, one round) so that CI notices when it no
longer runs (``tests/deploy/test_benches.py``); its numbers mean nothing and go to ``bench/results/smoke/``,
never over a real run's. A bench that needs what CI does not have (a real A1111) says so and exits 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SKIPPED = "smoke: skipped:"


def add_smoke_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one round: only checks that the bench runs (results in bench/results/smoke/)",
    )


def results_file(name: str, smoke: bool) -> Path:
    """``bench/results/NAME``, or ``bench/results/smoke/NAME`` for a smoke run; its folder exists."""
    path = RESULTS / "smoke" / name if smoke else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def skip_smoke(reason: str) -> int:
    """A smoke run that cannot measure here: the reason, and success (its arguments and imports were fine)."""
    sys.stdout.write(f"{SKIPPED} {reason}\n")
    return 0


def demo_checkpoint(folder: Path) -> Path:
    """The tiny random SD1.5 single file of ``make-demo-models``, written into ``folder`` (smoke runs)."""
    subprocess.run(
        [sys.executable, "-m", "diffusers_server", "make-demo-models", str(folder)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return next((folder / "checkpoints").glob("*.safetensors"))
