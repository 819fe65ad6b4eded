"""Conversion benchmark: the registry's converters on a full-size checkpoint, and the embedded engine's cold
start from a diffusers folder vs from the single file.

Run: ``python bench/convert.py [--checkpoint PATH] [--rounds 3] [--sdxl]`` (``--smoke``: the tiny demo
checkpoint, one round, without diffusers' own conversion). Default checkpoint: the
full-size random SD1.5 of the reference A1111 install
(``~/.cache/a1111-reference/models/checkpoints/rand_sd15.safetensors``); ``--sdxl`` takes
``rand_sdxl.safetensors`` beside it (needs ~20 GB of free memory for the load rows).
Every measured step runs in a fresh child process (peak RSS is that process's own), the two sides of each
comparison alternate round by round, and medians are quoted. Outputs go to a temp folder and are deleted;
the table is printed and written to bench/results/convert.json.

Rows:
* single file -> diffusers folder: ours (numpy, streamed) vs diffusers' ``from_single_file`` +
  ``save_pretrained``;
* diffusers folder -> single file: ours;
* a full-size PEFT LoRA (rank 32 on every attention projection) -> kohya: ours;
* engine cold start: ``load_checkpoint`` of the folder vs of the single file (CPU, fp32), process start
  included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import add_smoke_flag, demo_checkpoint, results_file  # noqa: E402

A1111_ROOT = Path(os.environ.get("A1111_ROOT", Path.home() / ".cache" / "a1111-reference"))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- child steps (each in its own process) ----------------------------------------------------------


def child(step: str, source: str, target: str) -> dict[str, Any]:
    started = time.perf_counter()
    if step == "ours-to-folder":
        from worker.registry.convert import diffusers_from_checkpoint

        diffusers_from_checkpoint(Path(source), Path(target))
    elif step == "ours-to-single":
        from worker.registry.convert import checkpoint_from_diffusers
        from worker.registry.layouts import inspect_diffusers_folder

        checkpoint_from_diffusers(inspect_diffusers_folder(Path(source)), Path(target))
    elif step == "ours-lora":
        from worker.registry.convert import kohya_from_lora

        kohya_from_lora([Path(source)], Path(target))
    elif step == "diffusers-to-folder":
        import torch
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        from diffusers_server.models.pipelines import inspect_checkpoint
        from diffusers_server.models.skeleton import write_skeleton
        from diffusers_server.tokenizer import load_vocabulary

        kind, configs, _ = inspect_checkpoint(Path(source))
        vocabulary = load_vocabulary().write_folder(Path(target).parent / "vocabulary")
        skeleton = write_skeleton(Path(target).parent / "skeleton", kind, configs, vocabulary)
        cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
        extra = {"safety_checker": None, "feature_extractor": None} if kind == "sd15" else {}
        pipe = cls.from_single_file(
            source, config=str(skeleton), local_files_only=True, torch_dtype=torch.float16, **extra
        )
        pipe.save_pretrained(target)
    elif step in ("load-folder", "load-single"):
        import torch

        from diffusers_server.models.pipelines import Runtime, load_checkpoint

        loaded_at = time.perf_counter()
        torch.set_num_threads(2)
        load_checkpoint(Path(source), Runtime("cpu", torch.float32, False), Path(target), None)
        return {
            "seconds": time.perf_counter() - started,
            "load_s": time.perf_counter() - loaded_at,
            "peak_mb": _peak_mb(),
        }
    else:
        raise SystemExit(f"unknown step {step}")
    return {"seconds": time.perf_counter() - started, "peak_mb": _peak_mb()}


def run_child(step: str, source: Path, target: Path) -> dict[str, Any]:
    started = time.perf_counter()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": os.environ.get("HF_HOME", str(A1111_ROOT / "hf_home")),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", step, str(source), str(target)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def _size(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def full_size_peft_lora(path: Path, sdxl: bool, rank: int = 32) -> None:
    """A PEFT-layout LoRA with every attention projection of the real UNet (what a diffusers run writes)."""
    import numpy as np
    from safetensors.numpy import save_file

    from worker.registry.pipeline_configs import REAL_CONFIGS

    config = REAL_CONFIGS["sdxl" if sdxl else "sd15"]["unet"]
    channels = config["block_out_channels"]
    context = config["cross_attention_dim"]
    depth = config.get("transformer_layers_per_block", 1)
    depths = depth if isinstance(depth, list) else [depth] * len(channels)
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}

    def add(module: str, fan_in: int, fan_out: int) -> None:
        tensors[f"unet.{module}.lora_A.weight"] = rng.standard_normal((rank, fan_in)).astype(np.float16)
        tensors[f"unet.{module}.lora_B.weight"] = rng.standard_normal((fan_out, rank)).astype(np.float16)

    def block(prefix: str, width: int, blocks: int) -> None:
        for t in range(blocks):
            base = f"{prefix}.transformer_blocks.{t}"
            for attn, kv in (("attn1", width), ("attn2", context)):
                add(f"{base}.{attn}.to_q", width, width)
                add(f"{base}.{attn}.to_k", kv, width)
                add(f"{base}.{attn}.to_v", kv, width)
                add(f"{base}.{attn}.to_out.0", width, width)

    for i, kind in enumerate(config["down_block_types"]):
        if "CrossAttn" in kind:
            for j in range(config["layers_per_block"]):
                block(f"down_blocks.{i}.attentions.{j}", channels[i], depths[i])
    block("mid_block.attentions.0", channels[-1], depths[-1])
    for i, kind in enumerate(config["up_block_types"]):
        if "CrossAttn" in kind:
            for j in range(config["layers_per_block"] + 1):
                width = list(reversed(channels))[i]
                block(f"up_blocks.{i}.attentions.{j}", width, list(reversed(depths))[i])
    save_file(tensors, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("STEP", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--sdxl", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true", help="leave out diffusers' own conversion")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=os.environ.get("BENCH_TMP")))
    if args.smoke:
        args.checkpoint, args.rounds, args.skip_reference = demo_checkpoint(work / "demo"), 1, True
    name = "rand_sdxl.safetensors" if args.sdxl else "rand_sd15.safetensors"
    checkpoint = args.checkpoint or A1111_ROOT / "models" / "checkpoints" / name
    if not checkpoint.is_file():
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(
            f"{checkpoint} not found: build it with the reference A1111's make_models.py or pass --checkpoint"
        )
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        folder = work / "folder"
        for r in range(args.rounds):
            for step in ("ours-to-folder",) + (() if args.skip_reference else ("diffusers-to-folder",)):
                target = work / f"{step}-{r}"
                rows.setdefault(step, []).append(
                    run_child(step, checkpoint, target) | {"bytes": _size(target)}
                )
                if step == "ours-to-folder" and not folder.exists():
                    target.rename(folder)
                else:
                    shutil.rmtree(target, ignore_errors=True)
                shutil.rmtree(work / "skeleton", ignore_errors=True)
        lora = work / "peft.safetensors"
        full_size_peft_lora(lora, args.sdxl)
        for r in range(args.rounds):
            single = work / f"single-{r}.safetensors"
            rows.setdefault("ours-to-single", []).append(
                run_child("ours-to-single", folder, single) | {"bytes": _size(single)}
            )
            single.unlink()
            kohya = work / f"kohya-{r}.safetensors"
            rows.setdefault("ours-lora", []).append(
                run_child("ours-lora", lora, kohya) | {"bytes": _size(kohya)}
            )
            kohya.unlink()
        for r in range(args.rounds):
            order = ("load-single", "load-folder") if r % 2 == 0 else ("load-folder", "load-single")
            for step in order:
                source = checkpoint if step == "load-single" else folder
                rows.setdefault(step, []).append(run_child(step, source, work / f"skel-{step}-{r}"))
        report(rows, checkpoint, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: dict[str, list[dict[str, Any]]], checkpoint: Path, args: argparse.Namespace) -> None:
    def med(step: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[step])

    labels = {
        "ours-to-folder": "single file -> diffusers folder (ours)",
        "diffusers-to-folder": "single file -> diffusers folder (diffusers from_single_file+save_pretrained)",
        "ours-to-single": "diffusers folder -> single file (ours)",
        "ours-lora": "PEFT LoRA (rank 32, all attention) -> kohya (ours)",
        "load-single": "engine cold start from the single file",
        "load-folder": "engine cold start from the diffusers folder",
    }
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "bytes": checkpoint.stat().st_size,
        "rounds": args.rounds,
    }
    print(f"checkpoint {checkpoint.name}: {checkpoint.stat().st_size / 1e9:.2f} GB; medians of {args.rounds}")
    print(f"{'step':<80} {'wall s':>7} {'process s':>9} {'peak RSS MB':>11}")
    for step, label in labels.items():
        if step not in rows:
            continue
        wall = med(step, "load_s") if step.startswith("load") else med(step, "seconds")
        peak = med(step, "peak_mb")
        summary[step] = {
            "seconds": wall,
            "process_s": med(step, "process_s"),
            "peak_mb": peak,
            "runs": rows[step],
        }
        print(f"{label:<80} {wall:>7.2f} {med(step, 'process_s'):>9.2f} {peak:>11.0f}")
    if "diffusers-to-folder" in rows:
        ratio = med("ours-to-folder", "process_s") / med("diffusers-to-folder", "process_s")
        mem = med("ours-to-folder", "peak_mb") / med("diffusers-to-folder", "peak_mb")
        summary["ratio_ours_vs_diffusers"] = {"process_s": ratio, "peak_mb": mem}
        print(f"ours / diffusers (single -> folder): time {ratio:.2f}, peak memory {mem:.2f}")
    ratio = med("load-folder", "process_s") / med("load-single", "process_s")
    summary["ratio_cold_start_folder_vs_single"] = ratio
    print(f"cold start folder / single file: {ratio:.2f} (process start to loaded)")
    out = results_file("convert.json", args.smoke)
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
