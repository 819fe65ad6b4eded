"""A1111's start → ready with and without ControlNet and ADetailer, in the same run, alternating.

Each run is a fresh data dir and ``start.sh`` (``WORKER_ENGINE=a1111``) on the tiny test models, with the
extension-enabled venv (``scripts/setup_a1111_extensions.sh``) either way, so the only difference is the two
extensions in ``<data dir>/extensions``. Reported: start.sh → the extension's ``/worker/v1/health`` says
``ready`` (checkpoint loaded), and A1111's own "Startup time" (its scripts' share separately).

    A1111_DIR=... A1111_EXT_DIR=... python bench/extensions_cold_start.py [--rounds 3]

Writes bench/results/extensions_cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import add_smoke_flag, results_file, skip_smoke  # noqa: E402
from tests.support.real_a1111 import a1111_dir, launched, volume_with_tiny_models  # noqa: E402
from tests.support.real_a1111_extensions import extension_env  # noqa: E402

STARTUP = re.compile(r"Startup time: ([\d.]+)s.*?load scripts: ([\d.]+)s")


def one_run(install: Path, ext_dir: Path, with_extensions: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ext-cold-") as tmp_name:
        tmp = Path(tmp_name)
        models = volume_with_tiny_models(install, tmp / "models")
        (tmp / "a1111-data" / "extensions").mkdir(parents=True)
        if with_extensions:
            for extension in (ext_dir / "extensions").iterdir():
                (tmp / "a1111-data" / "extensions" / extension.name).symlink_to(extension)
        env = extension_env(install, ext_dir, tmp, models)
        started = time.monotonic()
        with launched(env, tmp / "start.log", timeout_s=900):
            ready_s = time.monotonic() - started
        log = (tmp / "start.log").read_text(errors="replace")
    found = STARTUP.search(log)
    return {
        "extensions": with_extensions,
        "ready_s": round(ready_s, 1),
        "a1111_startup_s": float(found.group(1)) if found else None,
        "load_scripts_s": float(found.group(2)) if found else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    add_smoke_flag(parser)
    args = parser.parse_args()
    install = a1111_dir()
    ext = Path(os.environ.get("A1111_EXT_DIR", "")).expanduser()
    if install is None or not (ext / "venv").is_dir():
        reason = "set A1111_DIR and A1111_EXT_DIR (scripts/setup_a1111_extensions.sh)"
        if args.smoke:
            return skip_smoke(reason)
        parser.error(reason)
    if args.smoke:
        args.rounds = 1
    runs = [one_run(install, ext, flag) for _ in range(args.rounds) for flag in (False, True)]
    print(f"{'round':>5} {'extensions':>10} {'ready_s':>8} {'a1111_startup_s':>16} {'load_scripts_s':>15}")
    for index, run in enumerate(runs):
        print(
            f"{index // 2 + 1:>5} {run['extensions']!s:>10} {run['ready_s']:>8} "
            f"{run['a1111_startup_s']!s:>16} {run['load_scripts_s']!s:>15}"
        )
    summary = {
        label: statistics.median(r["ready_s"] for r in runs if r["extensions"] is flag)
        for label, flag in (("without_median_ready_s", False), ("with_median_ready_s", True))
    }
    print(summary)
    out = results_file("extensions_cold_start.json", args.smoke)
    out.write_text(json.dumps({"runs": runs, **summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
