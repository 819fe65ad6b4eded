"""What an image build cost: the time of each build step (from scripts/build_image.sh's timestamped log), the
image's size and its size by layer (``podman history``). Prints a table; writes the same as JSON.

usage: image_report.py --log BUILD_LOG --image TAG --total SECONDS [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# "   123 STEP 24/40: RUN ..." as build_image.sh writes podman's output (seconds since the build began)
_STEP = re.compile(r"^\s*(\d+) STEP (\d+)/(\d+): (.*)$")
_CACHED = re.compile(r"^\s*\d+ --> Using cache ")
_MB = 1_000_000


def step_times(lines: list[str], total_s: int) -> list[dict[str, Any]]:
    """Each step's instruction, start, duration (until the next step or the end) and whether it was cached."""
    steps: list[dict[str, Any]] = []
    for line in lines:
        if m := _STEP.match(line):
            steps.append({"step": int(m[2]), "instruction": m[4], "start_s": int(m[1]), "cached": False})
        elif steps and _CACHED.match(line):
            steps[-1]["cached"] = True
    for step, after in zip(steps, [*steps[1:], None], strict=True):
        step["seconds"] = (after["start_s"] if after else total_s) - step["start_s"]
    return steps


def layers(image: str) -> list[dict[str, Any]]:
    """The image's layers, oldest first, with their size and the instruction that made them."""
    out = subprocess.run(
        ["podman", "history", "--no-trunc", "--format", "json", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = json.loads(out)
    return [
        {
            "size_mb": round(int(r.get("size", r.get("Size", 0))) / _MB, 1),
            "created_by": r.get("CreatedBy", ""),
        }
        for r in reversed(rows)
    ]


def image_size_mb(image: str) -> float:
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return round(int(out.strip()) / _MB, 1)


def _short(text: str, width: int = 90) -> str:
    # history lines read "|N ARG=value ... /bin/bash -o pipefail -c COMMAND": keep the command
    text = re.sub(r"\s+", " ", re.sub(r"^.*?/bin/(ba)?sh (-o pipefail )?-c ", "", text)).strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    steps = step_times(args.log.read_text(encoding="utf-8").splitlines(), args.total)
    report = {
        "image": args.image,
        "total_s": args.total,
        "size_mb": image_size_mb(args.image),
        "steps": steps,
        "layers": layers(args.image),
    }
    out = sys.stdout
    out.write(f"\nbuild of {args.image}: {args.total} s, image {report['size_mb']} MB\n\n")
    out.write(f"{'step':>4} {'s':>6}  instruction (steps of 1 s or more)\n")
    for step in steps:
        if step["seconds"] >= 1:
            cached = " (cached)" if step["cached"] else ""
            out.write(f"{step['step']:>4} {step['seconds']:>6}  {_short(step['instruction'])}{cached}\n")
    out.write(f"\n{'MB':>8}  layer (1 MB or more)\n")
    for layer in report["layers"]:
        if layer["size_mb"] >= 1:
            out.write(f"{layer['size_mb']:>8}  {_short(layer['created_by'])}\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        out.write(f"\nwritten to {args.json}\n")


if __name__ == "__main__":
    main()
