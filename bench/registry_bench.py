"""Registry benchmark: hashing vs sha256sum, warm scan of 5,000 files, download vs curl (hash included).

Run: ``python bench/registry_bench.py [--size-mb 1024] [--files 5000]`` (``--smoke``: 1 MB, 20 files). Temp
files live under /tmp and are deleted; results print as a table and go to bench/results/registry.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_smoke_flag, results_file
from worker.registry.download import Downloader, DownloadRequest
from worker.registry.hashing import hash_file
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry


def best(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def make_big_safetensors(path: Path, size: int) -> None:
    """A valid safetensors file of ``size`` bytes (one U8 tensor) filled with random blocks."""
    header = b""
    for _ in range(3):  # the header length depends on the data length it describes
        data_len = size - 8 - len(header)
        header = json.dumps(
            {"blob": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}}
        ).encode()
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        remaining = data_len
        while remaining > 0:
            n = min(remaining, len(block))
            fh.write(block[:n])
            remaining -= n


def bench_hash(path: Path) -> dict[str, float]:
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    ours = best(lambda: hash_file(path))
    ref = best(lambda: subprocess.run(["sha256sum", str(path)], capture_output=True, check=True))
    return {
        "ours_s": ours,
        "sha256sum_s": ref,
        "ours_MBps": size / ours / 1e6,
        "sha256sum_MBps": size / ref / 1e6,
        "ratio": ref / ours,
    }


def bench_scan(root: Path, files: int) -> dict[str, float]:
    models = root / "models"
    loras = models / "loras"
    loras.mkdir(parents=True)
    blob = json.dumps(
        {"lora_te2_x.lora_down.weight": {"dtype": "F16", "shape": [1, 2], "data_offsets": [0, 4]}}
    )
    payload = struct.pack("<Q", len(blob)) + blob.encode() + b"\0\0\0\0"
    for i in range(files):
        (loras / f"l{i:05d}.safetensors").write_bytes(payload + i.to_bytes(4, "little"))
    registry = ModelRegistry(
        models_dir=models,
        registry_path=models / "registry.json",
        catalogue=Catalogue(),
        allowed_hosts=(),
    )
    t0 = time.perf_counter()
    cold = registry.scan()
    cold_s = time.perf_counter() - t0
    assert cold.total == files
    calls = []

    def counting(path, offset=None, progress=None):
        calls.append(path)
        return hash_file(path, offset, progress)

    warm_registry = ModelRegistry(
        models_dir=models,
        registry_path=models / "registry.json",
        catalogue=Catalogue(),
        allowed_hosts=(),
        hasher=counting,
    )
    warm_s = best(warm_registry.scan)
    assert not calls, "warm scan hashed files"
    return {"files": files, "cold_scan_s": cold_s, "warm_scan_s": warm_s}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_download(path: Path, root: Path) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(path.parent),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/{path.name}"
        size = path.stat().st_size
        out = root / "curl.out"

        def curl() -> None:
            subprocess.run(["curl", "-sf", "-o", str(out), url], check=True)
            subprocess.run(["sha256sum", str(out)], capture_output=True, check=True)
            out.unlink()

        dest = root / "dl"
        downloader = Downloader(allowed_hosts=(f"127.0.0.1:{port}",), max_bytes=size * 2, timeout_s=60)

        def ours() -> None:
            result = downloader.fetch(
                DownloadRequest(url=url, dest_dir=dest, key="bench", file_name="got.safetensors")
            )
            result.path.unlink()

        ref = best(curl, 2)
        mine = best(ours, 2)
        return {
            "ours_s": mine,
            "curl_plus_sha256sum_s": ref,
            "ours_MBps": size / mine / 1e6,
            "ratio": ref / mine,
        }
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=5000)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size_mb, args.files = 1, 20
    root = Path(tempfile.mkdtemp(prefix="registry-bench-", dir="/tmp"))
    try:
        big = root / "serve" / "big.safetensors"
        big.parent.mkdir()
        make_big_safetensors(big, args.size_mb * 1024 * 1024)
        results = {
            "hash": bench_hash(big),
            "scan": bench_scan(root, args.files),
            "download": bench_download(big, root),
            "size_bytes": big.stat().st_size,
            "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    h, s, d = results["hash"], results["scan"], results["download"]
    rows = [
        (
            "sha256 (ours)",
            f"{h['ours_MBps']:.0f} MB/s",
            f"sha256sum {h['sha256sum_MBps']:.0f} MB/s",
            f"{h['ratio']:.2f}",
            ">= 0.9",
        ),
        (
            "warm scan",
            f"{s['warm_scan_s'] * 1000:.0f} ms",
            f"{s['files']} files (cold {s['cold_scan_s']:.1f}s)",
            "-",
            "< 1 s",
        ),
        (
            "download+hash",
            f"{d['ours_MBps']:.0f} MB/s",
            f"curl+sha256sum {d['curl_plus_sha256sum_s']:.2f}s",
            f"{d['ratio']:.2f}",
            ">= 0.8",
        ),
    ]
    print(f"{'measure':<16}{'ours':>12}  {'reference':<40}{'ratio':>6}  target")
    for name, ours, ref, ratio, target in rows:
        print(f"{name:<16}{ours:>12}  {ref:<40}{ratio:>6}  {target}")
    out = results_file("registry.json", args.smoke)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
