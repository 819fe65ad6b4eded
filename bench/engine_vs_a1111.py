"""The embedded engine against A1111 (CPU) and against plain diffusers (accelerator): the same requests.

Two modes:

``--mode servers`` (default; the project's CPU machine): the engine and A1111 each started cold as a server
on the same SD1.5 single file, one after the other: seconds from start to the first image, seconds per
step at 512x512 (the difference between a 12-step and a 4-step request, so text encoding, VAE and HTTP
cancel out) and the server's RSS. ``--skip-a1111`` measures the engine alone.

    python bench/engine_vs_a1111.py --checkpoint MODELS/checkpoints/rand_sd15.safetensors \\
        [--serve SCRIPT] [--skip-a1111]

``--serve SCRIPT`` is run as ``bash SCRIPT PORT MODELS_DIR`` and must start A1111 v1.10.1 on PORT over
MODELS_DIR, writing its pid to ``$A1111_ROOT/a1111-PORT.pid`` (default: ``shared/reference-a1111/serve.sh``
beside the checkout, where the team machine keeps one).

``--mode accelerator`` (a CUDA machine; nothing is downloaded): writes full-size random SD1.5 and SDXL
single files (``--kinds``), then for each, fp16: the engine in-process (its own samplers) and a plain
diffusers pipeline on the same weights (Euler, same size and steps), alternating, seconds per step from
30- and 10-step runs; the engine must be within 5 % of diffusers' it/s. Needs torch, transformers,
accelerate, safetensors, pillow, psutil, scipy there, plus this repository and wheels of diffusers, torchsde,
trampoline, pydantic, openai-clip, ftfy, wcwidth, regex and lark (``pip install --no-index --target DIR
WHEELS``; see docs/performance.md).

    python bench/engine_vs_a1111.py --mode accelerator [--kinds sd15,sdxl] [--runs 3] [--workdir /tmp/bench]

``--smoke`` (CI): the servers mode on the tiny demo checkpoint at 64x64, the engine only, one run.

Prints a table and writes bench/results/engine_vs_a1111.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import add_smoke_flag, demo_checkpoint, results_file  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, lowres"
SIZE = 512  # the servers mode's image side (--smoke: 64)


def post(url: str, body: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return dict(json.loads(response.read()))


def rss_gib(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        total += child.memory_info().rss
    return total / 1024**3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def txt2img(url: str, steps: int, size: int) -> float:
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps, "width": size, "height": size}
    started = time.perf_counter()
    result = post(f"{url}/sdapi/v1/txt2img", {**body, "seed": 1, "sampler_name": "Euler", "cfg_scale": 7})
    assert result["images"], "no image"
    return time.perf_counter() - started


def measure_server(name: str, url: str, pid: int, started: float, runs: int) -> dict[str, Any]:
    first = txt2img(url, 4, SIZE)
    cold = time.perf_counter() - started
    per_step = []
    for _ in range(runs):
        per_step.append((txt2img(url, 12, SIZE) - txt2img(url, 4, SIZE)) / 8)
    return {
        "engine": name,
        "cold_start_to_first_image_s": round(cold, 1),
        "first_request_s": round(first, 1),
        "s_per_step_512": round(statistics.median(per_step), 2),
        "rss_gib": round(rss_gib(pid), 2),
    }


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, deadline_s: float = 1800) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/sdapi/v1/sd-models", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {deadline_s} s")


def run_servers(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.support.real_a1111 import place_model_file

    rows = []
    checkpoint: Path = args.checkpoint.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        models = Path(tmp)
        for sub in ("checkpoints", "loras", "embeddings", "vae"):
            (models / sub).mkdir()
        place_model_file(checkpoint, models / "checkpoints" / checkpoint.name)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "diffusers_server", "serve", "--models-dir", str(models)]
        command += ["--port", str(port), "--threads", str(args.threads), "--cpu"]
        if args.clip_tokenizer:
            command += ["--clip-tokenizer", str(args.clip_tokenizer)]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(url, process)
            rows.append(measure_server("embedded engine", url, process.pid, started, args.runs))
        finally:
            process.terminate()
            process.wait(timeout=60)
        if args.skip_a1111:
            return rows
        a1111_root = Path(os.environ.get("A1111_ROOT", Path.home() / ".cache" / "a1111-reference"))
        port = args.a1111_port
        started = time.perf_counter()
        subprocess.run(["bash", str(args.serve), str(port), str(models)], check=True, timeout=1800)
        pid = int((a1111_root / f"a1111-{port}.pid").read_text().strip())
        try:
            rows.append(measure_server("A1111 v1.10.1", f"http://127.0.0.1:{port}", pid, started, args.runs))
        finally:
            os.kill(pid, signal.SIGTERM)
    return rows


# ---- accelerator mode ----


def write_full_size(path: Path, kind: str) -> None:
    """Random full-size weights in A1111's single-file layout (fp16), generated here."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffusers_server.demo_models import save_file
    from diffusers_server.models.ldm_keys import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
    from worker.registry.pipeline_configs import REAL_CONFIGS

    configs = REAL_CONFIGS[kind]  # type: ignore[index]
    torch.manual_seed(0)
    text_config = {
        k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "model_type")
    }
    tensors = unet_to_ldm(UNet2DConditionModel(**configs["unet"]).state_dict(), configs["unet"])
    vae_config = {k: v for k, v in configs["vae"].items() if not k.startswith("_")}
    tensors |= vae_to_ldm(AutoencoderKL(**vae_config).state_dict(), vae_config)
    te = CLIPTextModel(CLIPTextConfig(**text_config)).state_dict()
    if kind == "sd15":
        tensors |= clip_to_ldm(te, "cond_stage_model.transformer.")
    else:
        tensors |= clip_to_ldm(te, "conditioner.embedders.0.transformer.")
        te2_config = {
            k: v for k, v in configs["text_encoder_2"].items() if k not in ("architectures", "model_type")
        }
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_config)).state_dict()
        tensors |= open_clip_to_ldm(te2, "conditioner.embedders.1.model.")
    tensors = {
        k: v.to(torch.float16).contiguous() for k, v in tensors.items() if not k.endswith("position_ids")
    }
    save_file(tensors, path, {"note": "random weights for benchmarks"})


def run_accelerator(args: argparse.Namespace) -> list[dict[str, Any]]:
    import psutil
    import torch
    from diffusers import EulerDiscreteScheduler

    from diffusers_server.config import ServerConfig
    from diffusers_server.engine import Engine
    from diffusers_server.schemas import Txt2ImgRequest

    assert torch.cuda.is_available(), "--mode accelerator needs CUDA"
    rows = []
    work = Path(args.workdir)
    for kind in args.kinds.split(","):
        size = 512 if kind == "sd15" else 1024
        models = work / kind
        (models / "checkpoints").mkdir(parents=True, exist_ok=True)
        path = models / "checkpoints" / f"random-{kind}.safetensors"
        started = time.perf_counter()
        if not path.exists():
            write_full_size(path, kind)
        written = time.perf_counter() - started
        rss_before = psutil.Process().memory_info().rss
        started = time.perf_counter()
        engine = Engine(ServerConfig(models_dir=models))
        engine.load_default()
        assert engine.load_error is None, engine.load_error
        load_s = time.perf_counter() - started
        pipe = engine.model.pipe  # type: ignore[union-attr]
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        request = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": size, "height": size, "seed": 1}
        request |= {"sampler_name": "Euler", "cfg_scale": 7.0}

        def ours(steps: int, request: dict[str, Any] = request, engine: Engine = engine) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            engine.txt2img(Txt2ImgRequest(**request, steps=steps))
            torch.cuda.synchronize()
            return time.perf_counter() - t

        def plain(steps: int, pipe: Any = pipe, size: int = size) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.inference_mode():
                pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, width=size, height=size)
            torch.cuda.synchronize()
            return time.perf_counter() - t

        ours(4)
        plain(4)  # warm-up (kernels, allocator)
        ours_steps, plain_steps, ours_total, plain_total = [], [], [], []
        for _ in range(args.runs):
            o30, p30, o10, p10 = ours(30), plain(30), ours(10), plain(10)
            ours_total.append(o30)
            plain_total.append(p30)
            ours_steps.append((o30 - o10) / 20)
            plain_steps.append((p30 - p10) / 20)
        o, p = statistics.median(ours_steps), statistics.median(plain_steps)
        rows.append(
            {
                "kind": kind,
                "size": size,
                "write_random_weights_s": round(written, 1),
                "load_s": round(load_s, 1),
                "engine_it_s": round(1 / o, 2),
                "diffusers_it_s": round(1 / p, 2),
                "ratio": round(p / o, 3),
                "engine_30_steps_s": round(statistics.median(ours_total), 2),
                "diffusers_30_steps_s": round(statistics.median(plain_total), 2),
                "host_rss_gib": round((psutil.Process().memory_info().rss - rss_before) / 1024**3, 2),
                "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
                "device": torch.cuda.get_device_name(0),
            }
        )
        print(json.dumps(rows[-1]), flush=True)  # a partial run still reports the finished kinds
        del engine, pipe
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return rows


def main() -> None:
    global SIZE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("servers", "accelerator"), default="servers")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--clip-tokenizer", type=Path)
    bases = (ROOT.parent, ROOT.parent.parent)
    candidates = [base / "shared" / "reference-a1111" / "serve.sh" for base in bases]
    default_serve = next((c for c in candidates if c.is_file()), candidates[0])
    parser.add_argument("--serve", type=Path, default=default_serve)
    parser.add_argument("--a1111-port", type=int, default=7872)
    parser.add_argument("--skip-a1111", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="sd15,sdxl")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "engine-bench"))
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            SIZE, args.mode, args.skip_a1111, args.runs = 64, "servers", True, 1
            args.checkpoint = demo_checkpoint(Path(tmp))
            report(run_servers(args), args)
        return
    if args.mode == "servers":
        if args.checkpoint is None:
            parser.error("--mode servers needs --checkpoint (an SD1.5 single file)")
        rows = run_servers(args)
    else:
        rows = run_accelerator(args)
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out = results_file("engine_vs_a1111.json", args.smoke)
    out.write_text(json.dumps({"mode": args.mode, "rows": rows}, indent=1), encoding="utf-8")
    keys = list(rows[0]) if rows else []
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
