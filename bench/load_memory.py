"""Peak RSS while the engine loads a single-file checkpoint, against the steady RSS once it is loaded.

Loading must never hold two copies of the weights: peak <= 1.2x steady. The load runs in a child process
whose RSS is sampled every 20 ms from here (psutil); "steady" is its RSS after the load and a gc.

    python bench/load_memory.py --checkpoint MODELS/checkpoints/rand_sd15.safetensors [--clip-tokenizer DIR]
    python bench/load_memory.py --checkpoint MODELS/checkpoints/rand_sdxl.safetensors

``--smoke`` (CI): the tiny demo checkpoint. Prints a table and writes bench/results/load_memory-<stem>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import add_smoke_flag, demo_checkpoint, results_file  # noqa: E402

CHILD = """
import gc, sys, tempfile, time, torch
from pathlib import Path
from diffusers_server.models.pipelines import Runtime, load_checkpoint
tok = Path(sys.argv[2]) if sys.argv[2] else None
print("imported", flush=True)
sys.stdin.readline()
started = time.perf_counter()
runtime = Runtime("cpu", torch.float32, False)
model = load_checkpoint(Path(sys.argv[1]), runtime, Path(tempfile.mkdtemp()), tok)
gc.collect()
print(f"loaded {time.perf_counter() - started:.2f}", flush=True)
sys.stdin.readline()
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--clip-tokenizer", type=Path)
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            args.checkpoint = demo_checkpoint(Path(tmp))
            measure(args)
    elif args.checkpoint is None:
        parser.error("--checkpoint is required (or --smoke)")
    else:
        measure(args)


def measure(args: argparse.Namespace) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.checkpoint), str(args.clip_tokenizer or "")],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    process = psutil.Process(child.pid)
    try:
        assert child.stdout.readline().startswith("imported")
        before = process.memory_info().rss
        child.stdin.write("go\n")
        child.stdin.flush()
        peak = before
        line = ""
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(child.stdout, selectors.EVENT_READ)
        while not line:
            peak = max(peak, process.memory_info().rss)
            if selector.select(timeout=0.02):
                line = child.stdout.readline()
        time.sleep(0.5)
        steady = process.memory_info().rss
        load_s = float(line.split()[1])
    finally:
        child.kill()
        child.wait(timeout=30)
    gib = 1024**3
    row = {
        "checkpoint": args.checkpoint.name,
        "file_gib": round(args.checkpoint.stat().st_size / gib, 2),
        "rss_before_load_gib": round(before / gib, 2),
        "peak_rss_during_load_gib": round(peak / gib, 2),
        "steady_rss_after_load_gib": round(steady / gib, 2),
        "peak_over_steady": round(peak / steady, 3),
        "load_s": load_s,
    }
    out = results_file(f"load_memory-{args.checkpoint.stem}.json", args.smoke)
    out.write_text(json.dumps(row, indent=1), encoding="utf-8")
    for key, value in row.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
