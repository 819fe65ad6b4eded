"""Registry jobs benchmark: a pull job against ``curl`` to disk (alternating, one run), and a ``list`` job
on a volume of 2,000 files.

Run: ``python bench/model_jobs_bench.py`` (2 GB file, 3 rounds) or ``--smoke`` (64 MB, 1 round, 200 files).
The served file is a sparse safetensors file generated under /tmp/model-jobs-bench-*, deleted at the end, as
is everything downloaded. Results print as a table and go to bench/results/model_jobs.json.

The pull goes through the whole job path (``JobRunner.run``: parse, the registry's locked, verified download
with sha256 computed while streaming, fsync and rename, registration, the engine's folder rescan). ``curl``
writes the same bytes to the same disk; ``curl + sync`` also flushes them, as the job does before its rename.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry.jobs import RegistryJobs
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry
from worker.settings import WorkerSettings

RESULTS = Path(__file__).resolve().parent / "results" / "model_jobs.json"


def sparse_safetensors(path: Path, size: int) -> str:
    """A valid safetensors file of ``size`` bytes whose data is a hole (no disk used); returns its sha256."""
    header = b""
    for _ in range(3):  # the header's length depends on the data length it describes
        data_len = size - 8 - len(header)
        header = json.dumps(
            {"blob": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}}
        ).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(size)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_files(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m http.server`` over ``folder`` in its own process (as a remote host would be)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


class QuietEngine(BaseHTTPRequestHandler):
    """Answers A1111's refresh endpoints (all the job needs of an engine) with ``null``."""

    def do_POST(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"null")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def job_runner(models: Path, allowed_host: str, engine_url: str) -> JobRunner:
    settings = WorkerSettings.model_validate(
        {
            "a1111_url": engine_url,
            "models_dir": models,
            "allow_model_jobs": True,
            "download_allowed_hosts": allowed_host,
            "download_max_bytes": 10**11,
        }
    )
    registry = ModelRegistry.from_settings(settings, catalogue=Catalogue())
    return JobRunner(
        settings,
        A1111Client(engine_url),
        provider=registry,
        model_jobs=RegistryJobs(registry, engine="a1111", interval_s=settings.progress_interval_s),
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def bench_pull(root: Path, size: int, rounds: int, engine_url: str) -> dict[str, Any]:
    served = root / "serve"
    served.mkdir()
    big = served / "big.safetensors"
    sha256 = sparse_safetensors(big, size)
    server, host = serve_files(served)
    models = root / "models"
    runner = job_runner(models, host, engine_url)
    url = f"http://{host}/big.safetensors"
    pull = {"registry": {"action": "pull", "ref": url, "kind": "checkpoint", "sha256": sha256}}
    remove = {"registry": {"action": "remove", "ref": "checkpoints/big.safetensors"}}
    out = root / "curl.out"
    times: dict[str, list[float]] = {"job": [], "curl": [], "curl_sync": []}
    try:
        for _ in range(rounds):  # alternate, so both see the same machine state
            seconds, _ = timed(lambda: subprocess.run(["curl", "-sf", "-o", str(out), url], check=True))
            times["curl"].append(seconds)
            out.unlink()
            seconds, _ = timed(
                lambda: (
                    subprocess.run(["curl", "-sf", "-o", str(out), url], check=True),
                    subprocess.run(["sync", str(out)], check=True),
                )
            )
            times["curl_sync"].append(seconds)
            out.unlink()
            seconds, result = timed(lambda: runner.run({"id": "pull", "input": pull}))
            assert "error" not in result and result["registry"]["sha256_verified"], result
            times["job"].append(seconds)
            assert "error" not in runner.run({"id": "remove", "input": remove})
    finally:
        server.terminate()
        server.wait()
    best = {name: min(values) for name, values in times.items()}
    # each round's curl and job ran back to back: their ratio is the least disturbed by other load
    per_round = {
        ref: statistics.median(r / j for r, j in zip(times[ref], times["job"], strict=True))
        for ref in ("curl", "curl_sync")
    }
    return {
        "size_bytes": size,
        "rounds": rounds,
        "seconds": times,
        "best_s": best,
        "job_MBps": size / best["job"] / 1e6,
        "curl_MBps": size / best["curl"] / 1e6,
        "curl_sync_MBps": size / best["curl_sync"] / 1e6,
        "ratio_vs_curl": per_round["curl"],
        "ratio_vs_curl_sync": per_round["curl_sync"],
    }


def bench_list(root: Path, files: int, engine_url: str) -> dict[str, Any]:
    models = root / "list-models"
    split = {"loras": files * 3 // 4, "checkpoints": files // 10, "embeddings": files // 20}
    split["vae"] = files - sum(split.values())
    blob = json.dumps({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    for folder, count in split.items():
        (models / folder).mkdir(parents=True)
        for i in range(count):
            data = i.to_bytes(4, "little")
            (models / folder / f"m{i:05d}.safetensors").write_bytes(
                struct.pack("<Q", len(blob)) + blob + data
            )
    runner = job_runner(models, "127.0.0.1:1", engine_url)
    cold_s, _ = timed(lambda: runner.run({"id": "list", "input": {"registry": {"action": "list"}}}))
    samples = []
    for _ in range(20):
        seconds, result = timed(lambda: runner.run({"id": "list", "input": {"registry": {"action": "list"}}}))
        assert sum(result["registry"]["counts"].values()) == files, result.get("error")
        samples.append(seconds)
    return {
        "files": files,
        "first_s": cold_s,
        "median_ms": statistics.median(samples) * 1000,
        "best_ms": min(samples) * 1000,
        "output_bytes": len(json.dumps(result)),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="64 MB, one round, 200 files: a quick check")
    parser.add_argument("--size-mb", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--files", type=int, default=None)
    args = parser.parse_args()
    size = (args.size_mb or (64 if args.smoke else 2048)) * 1024 * 1024
    rounds = args.rounds or (1 if args.smoke else 3)
    files = args.files or (200 if args.smoke else 2000)
    root = Path(tempfile.mkdtemp(prefix="model-jobs-bench-", dir="/tmp"))
    engine = ThreadingHTTPServer(("127.0.0.1", 0), QuietEngine)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    engine_url = f"http://127.0.0.1:{engine.server_address[1]}"
    load_before = [round(v, 2) for v in os.getloadavg()]
    try:
        results = {
            "pull": bench_pull(root, size, rounds, engine_url),
            "list": bench_list(root, files, engine_url),
            "cpu_count": os.cpu_count(),
            "smoke": args.smoke,
            "load_before": load_before,
            "load_after": [round(v, 2) for v in os.getloadavg()],
        }
    finally:
        engine.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    p, li = results["pull"], results["list"]
    mb = f"{size // 2**20} MB"
    rows = [
        (
            f"pull job {mb}",
            f"{p['job_MBps']:.0f} MB/s",
            f"curl to disk {p['curl_MBps']:.0f} MB/s",
            f"{p['ratio_vs_curl']:.2f}",
            ">= 0.9",
        ),
        (
            f"pull job {mb}",
            f"{p['job_MBps']:.0f} MB/s",
            f"curl + sync {p['curl_sync_MBps']:.0f} MB/s",
            f"{p['ratio_vs_curl_sync']:.2f}",
            "-",
        ),
        (
            f"list job {files} files",
            f"{li['median_ms']:.1f} ms",
            f"first {li['first_s'] * 1000:.0f} ms",
            "-",
            "< 50 ms",
        ),
    ]
    print(f"{'measure':<22}{'ours':>12}  {'reference':<34}{'job/ref':>8}  target")
    for name, ours, ref, ratio, target in rows:
        print(f"{name:<22}{ours:>12}  {ref:<34}{ratio:>8}  {target}")
    print(
        "job/ref = job throughput / reference throughput (= reference seconds / job seconds for the same "
        "bytes), median of the per-round ratios; above 1 the job is faster. MB/s from each one's best round."
    )
    print(f"load average (1, 5, 15 min) before {results['load_before']}, after {results['load_after']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
