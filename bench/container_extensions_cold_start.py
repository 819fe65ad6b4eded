"""The image's start → ready with ControlNet and ADetailer loaded and left out, alternating in one run.

The same image both ways, a fresh container each time (bench/container_cold_start.py's run: host network, the
models folder as the volume, ``WORKER_MODE=local`` with ``WORKER_DEFAULT_CHECKPOINT``), once as it starts by
default (both extensions loaded) and once with ``A1111_DISABLED_EXTENSIONS=controlnet,adetailer``: the
cold-start cost of the extensions, and what the variable saves. Reported per phase (seconds since
``podman run``) with A1111's own "Startup time" and its "load scripts" share.

    python bench/container_extensions_cold_start.py --image TAG [--models DIR --checkpoint NAME] [--rounds 3]

Without ``--models`` the small A1111 test models are made by the image's own A1111 (``tiny_a``).
Writes bench/results/container_extensions_cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from container_cold_start import container_run  # noqa: E402

from bench.common import add_smoke_flag, results_file, skip_smoke  # noqa: E402
from tests.support.podman import make_tiny_models, podman, skip_reason  # noqa: E402

SETTINGS = {"loaded": {}, "left_out": {"A1111_DISABLED_EXTENSIONS": "controlnet,adetailer"}}
MEASURES = ("engine_started", "api_up", "checkpoint_loaded", "worker_ready", "a1111_startup", "load_scripts")


def cannot_run(image: str, smoke: bool) -> str | None:
    """Why this bench cannot run here, or None. A smoke run also needs the image suite's opt-in (it starts two
    containers: minutes, too long for tests/deploy/test_benches.py unasked)."""
    if shutil.which("podman") is None or (smoke and skip_reason() is not None):
        return skip_reason() or "needs podman"
    if podman("image", "exists", image, check=False).returncode != 0:
        return f"no image {image} (scripts/build_image.sh; docs/deploying.md)"
    return None


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {m: round(statistics.median(r[m] for r in runs), 1) for m in MEASURES if all(m in r for r in runs)}


def measure(image: str, models: Path, checkpoint: str, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    for round_number in range(1, rounds + 1):
        for setting, env in SETTINGS.items():
            runs[setting].append(container_run(image, models, checkpoint, env))
            print(f"round {round_number} {setting}: {runs[setting][-1]}", flush=True)
    return {"runs": runs, "medians": {setting: medians(found) for setting, found in runs.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/a1111-worker:ext")
    parser.add_argument("--models", type=Path, help="volume-layout folder (default: the tiny test models)")
    parser.add_argument("--checkpoint", default="tiny_a", help="WORKER_DEFAULT_CHECKPOINT")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each, alternating")
    add_smoke_flag(parser)
    args = parser.parse_args()
    reason = cannot_run(args.image, args.smoke)
    if reason is not None:
        if args.smoke:
            return skip_smoke(reason)
        parser.error(reason)
    with tempfile.TemporaryDirectory(prefix="ext-cold-models-") as tmp:
        models = args.models or make_tiny_models(args.image, Path(tmp) / "models")
        record = measure(args.image, models.resolve(), args.checkpoint, 1 if args.smoke else args.rounds)
    print("\nsetting | " + " | ".join(MEASURES) + "  (seconds since podman run; medians)")
    for setting, row in record["medians"].items():
        print(f"{setting} | " + " | ".join(str(row.get(m, "-")) for m in MEASURES))
    out = results_file("container_extensions_cold_start.json", args.smoke)
    record |= {"image": args.image, "checkpoint": args.checkpoint, "cpu_count": os.cpu_count()}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
