"""Proof on the real engines that the registry's conversions are exact: run against a real A1111 (and, for the
cross-engine check, the embedded engine serving the same folder).

Two phases, so that the model-writing phase (torch, diffusers) and A1111 never hold memory at once:

  python scripts/prove_conversions.py prepare --models DIR [--checkpoint CKPT] [--lora KOHYA_LORA]
  bash /path/to/reference-a1111/serve.sh PORT DIR          # A1111 on DIR (any A1111 >= 1.9 works)
  python scripts/prove_conversions.py prove --models DIR --a1111 http://127.0.0.1:PORT [--embedded URL]

``prepare`` writes into DIR (A1111's folder layout): the checkpoint (hard-linked), the kohya LoRA, the same
LoRA re-written by diffusers' own code in PEFT layout (``save_lora_weights`` with its adapter metadata:
``proof-peft``), that file converted back by the registry (``proof-peft-kohya``), and the checkpoint
converted single file -> diffusers folder -> single file, both by us (``*-roundtrip``) and with the folder
written by diffusers' ``save_pretrained`` (``*-via-diffusers``). ``prove`` renders the same request on each
and checks (PSNR in dB over 8-bit pixels; "inf" = identical):

1. A1111 with the converted LoRA == A1111 with the original kohya LoRA (>= 50 dB);
2. A1111 ignores the unconverted PEFT LoRA (identical to no LoRA) and the converted one changes the image;
3. the checkpoint round trips give A1111 the original's pixels (>= 50 dB);
4. with ``--embedded``: the embedded engine with the original PEFT file vs A1111 with the converted file
   (>= 40 dB; needs the embedded engine's pixel parity with A1111, docs/engine.md), plus the embedded
   engine's own consistency (original == converted) and its A1111 parity without any LoRA, for context.

Results print as a table and go to bench/results/conversion_proof.json; the exit status is 1 on any failure.
Each engine's images are saved as PNGs; ``prove`` without ``--a1111`` reuses A1111's saved ones, so the
cross-engine check can run with only the embedded engine in memory.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "conversion_proof.json"
REQUEST = {
    "prompt": "a lighthouse on a cliff at dusk, detailed",
    "negative_prompt": "blurry",
    "steps": 4,
    "width": 64,
    "height": 64,
    "seed": 1234,
    "cfg_scale": 7,
    "sampler_name": "Euler",
    "send_images": True,
    "save_images": False,
}


def _place(source: Path, target: Path) -> None:
    """Hard-link a big input into the proof folder (no copy, and never a symlink)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare(args: argparse.Namespace) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    from diffusers_server.models.pipelines import inspect_checkpoint
    from worker.registry.convert import checkpoint_from_diffusers, diffusers_from_checkpoint
    from worker.registry.layouts import inspect_diffusers_folder
    from worker.registry.models import Catalogue
    from worker.registry.registry import ModelRegistry

    kind, configs, _ = inspect_checkpoint(args.checkpoint)
    pipeline_class = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    models: Path = args.models
    for sub in ("checkpoints", "loras", "embeddings", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    stem = args.checkpoint.stem
    _place(args.checkpoint, models / "checkpoints" / args.checkpoint.name)
    _place(args.lora, models / "loras" / args.lora.name)
    work = Path(tempfile.mkdtemp(prefix=".prove-", dir=models))  # outside the engines' model folders
    try:
        started = time.perf_counter()
        diffusers_from_checkpoint(args.checkpoint, work / "ours")
        checkpoint_from_diffusers(
            inspect_diffusers_folder(work / "ours"), models / "checkpoints" / f"{stem}-roundtrip.safetensors"
        )
        print(f"checkpoint round trip (ours both ways): {time.perf_counter() - started:.1f} s")
        if not args.skip_diffusers_writer:
            from diffusers_server.models.skeleton import write_skeleton
            from diffusers_server.tokenizer import load_vocabulary

            vocabulary = load_vocabulary().write_folder(work / "vocabulary")
            skeleton = write_skeleton(work / "skeleton", kind, configs, vocabulary)
            extra = {"safety_checker": None, "feature_extractor": None} if kind == "sd15" else {}
            pipe = pipeline_class.from_single_file(
                str(args.checkpoint),
                config=str(skeleton),
                local_files_only=True,
                torch_dtype=torch.float16,
                **extra,
            )
            pipe.save_pretrained(work / "by-diffusers")
            del pipe
            checkpoint_from_diffusers(
                inspect_diffusers_folder(work / "by-diffusers"),
                models / "checkpoints" / f"{stem}-via-diffusers.safetensors",
            )
            print("checkpoint via a folder written by diffusers' save_pretrained: done")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # The kohya LoRA re-written by diffusers' own code: its kohya reader, then save_lora_weights in PEFT keys.
    state, alphas = pipeline_class.lora_state_dict(str(args.lora))
    unet = convert_unet_state_dict_to_peft(
        {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
    )
    texts: dict[str, dict[str, Any]] = {}
    for encoder in ("text_encoder", "text_encoder_2"):
        part = {k[len(encoder) + 1 :]: v for k, v in state.items() if k.startswith(encoder + ".")}
        if part:
            texts[encoder] = convert_state_dict_to_peft(part)
    if not all(".lora_A." in k or ".lora_B." in k for k in (*unet, *(k for t in texts.values() for k in t))):
        raise SystemExit("diffusers did not produce PEFT keys (lora_A/lora_B) for this LoRA")
    ranks = {v.shape[0] for k, v in unet.items() if "lora_A" in k}
    alpha_values = set(alphas.values()) if alphas else set(ranks)
    if len(ranks) != 1 or len(alpha_values) != 1:
        raise SystemExit(
            f"{args.lora.name}: the proof needs one rank and one alpha ({ranks}, {alpha_values})"
        )
    rank, alpha = ranks.pop(), float(alpha_values.pop())
    meta = {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in unet}),
    }
    layers: dict[str, Any] = {"unet_lora_layers": unet, "unet_lora_adapter_metadata": meta}
    for encoder, part in texts.items():
        layers[f"{encoder}_lora_layers"] = part
        layers[f"{encoder}_lora_adapter_metadata"] = {
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in part}),
        }
    out = Path(tempfile.mkdtemp())
    pipeline_class.save_lora_weights(str(out), **layers)
    (out / "pytorch_lora_weights.safetensors").replace(models / "loras" / "proof-peft.safetensors")
    shutil.rmtree(out, ignore_errors=True)
    registry = ModelRegistry(
        models_dir=models,
        registry_path=models / "registry.json",
        catalogue=Catalogue(),
        allowed_hosts=(),
    )
    entry = registry.resolve("lora", "proof-peft").live
    assert entry is not None and entry.layout == "diffusers", entry
    result = registry.convert(entry, "a1111", force=True, base=args.checkpoint.name)
    output = result.output.key if result.output else "?"
    print(f"LoRA: {args.lora.name} -> proof-peft.safetensors (rank {rank}, alpha {alpha:g}) -> {output}")


# ---- prove ---------------------------------------------------------------------------------------------


def _post(url: str, payload: dict[str, Any]) -> Any:
    import requests

    response = requests.post(url, json=payload, timeout=900)
    if response.status_code != 200:
        raise RuntimeError(f"POST {url}: HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


def _get(url: str) -> Any:
    import requests

    response = requests.get(url, timeout=120)
    response.raise_for_status()
    return response.json()


def render(base: str, checkpoint: str, lora: str | None) -> Any:
    """One image as a uint8 array: the fixed request on ``checkpoint`` (file name), with ``<lora:name:1>``."""
    import numpy as np
    from PIL import Image

    titles = {m["title"].split(" [")[0]: m["title"] for m in _get(f"{base}/sdapi/v1/sd-models")}
    if checkpoint not in titles:
        _post(f"{base}/sdapi/v1/refresh-checkpoints", {})
        titles = {m["title"].split(" [")[0]: m["title"] for m in _get(f"{base}/sdapi/v1/sd-models")}
    payload = dict(REQUEST)
    if lora:
        payload["prompt"] = f"{payload['prompt']} <lora:{lora}:1>"
    payload["override_settings"] = {"sd_model_checkpoint": titles[checkpoint], "CLIP_stop_at_last_layers": 1}
    body = _post(f"{base}/sdapi/v1/txt2img", payload)
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB")
    return np.asarray(image)


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


IMAGES = RESULTS.parent / "conversion_proof_images"


def _engine_images(
    base: str | None, engine: str, wanted: dict[str, tuple[str, str | None]]
) -> dict[str, Any]:
    """Render ``wanted`` (label -> (checkpoint, LoRA)) on ``base``, or read the PNGs a run against that
    engine saved (so A1111 and the embedded engine never need to be in memory together)."""
    import numpy as np
    from PIL import Image

    images = {}
    for label, (checkpoint, lora) in wanted.items():
        path = IMAGES / f"{label.replace(' ', '_')}.png"
        if base is not None:
            images[label] = render(base, checkpoint, lora)
            IMAGES.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[label]).save(path)
        elif path.is_file():
            images[label] = np.asarray(Image.open(path).convert("RGB"))
        else:
            raise SystemExit(
                f"no {engine} URL given and no saved image {path}: run once with the {engine} URL"
            )
    return images


def prove(args: argparse.Namespace) -> int:
    ckpt = args.checkpoint.name
    stem = args.checkpoint.stem
    lora = args.lora.stem
    a1111 = args.a1111.rstrip("/") if args.a1111 else None
    started = time.perf_counter()
    if a1111:
        _post(f"{a1111}/sdapi/v1/refresh-loras", {})
    wanted: dict[str, tuple[str, str | None]] = {
        "a1111 base": (ckpt, None),
        "a1111 kohya original": (ckpt, lora),
        "a1111 peft unconverted": (ckpt, "proof-peft"),
        "a1111 peft converted": (ckpt, "proof-peft-kohya"),
        "a1111 roundtrip": (f"{stem}-roundtrip.safetensors", None),
    }
    if (args.models / "checkpoints" / f"{stem}-via-diffusers.safetensors").exists():
        wanted["a1111 via diffusers folder"] = (f"{stem}-via-diffusers.safetensors", None)
    images = _engine_images(a1111, "A1111", wanted)
    checks: list[tuple[str, float, str, bool]] = []

    def check(label: str, a: str, b: str, want: str) -> None:
        value = psnr(images[a], images[b])
        ok = {"same": value >= 50, "differs": value < 30, "close": value >= 40}[want]
        checks.append((label, value, want, ok))

    check(
        "A1111: converted LoRA vs the original kohya LoRA",
        "a1111 peft converted",
        "a1111 kohya original",
        "same",
    )
    check("A1111: unconverted PEFT LoRA vs no LoRA (ignored)", "a1111 peft unconverted", "a1111 base", "same")
    check("A1111: converted LoRA vs no LoRA (it applies)", "a1111 peft converted", "a1111 base", "differs")
    check(
        "A1111: checkpoint single -> diffusers -> single (ours) vs original",
        "a1111 roundtrip",
        "a1111 base",
        "same",
    )
    if "a1111 via diffusers folder" in images:
        check(
            "A1111: checkpoint via a diffusers save_pretrained folder vs original",
            "a1111 via diffusers folder",
            "a1111 base",
            "same",
        )
    if args.embedded:
        embedded = args.embedded.rstrip("/")
        _post(f"{embedded}/sdapi/v1/refresh-loras", {})
        images |= _engine_images(
            embedded,
            "embedded",
            {
                "embedded base": (ckpt, None),
                "embedded peft original": (ckpt, "proof-peft"),
                "embedded peft converted": (ckpt, "proof-peft-kohya"),
            },
        )
        check(
            "CROSS-ENGINE: embedded + original PEFT vs A1111 + converted",
            "embedded peft original",
            "a1111 peft converted",
            "close",
        )
        check(
            "embedded: original PEFT vs converted",
            "embedded peft original",
            "embedded peft converted",
            "same",
        )
        check(
            "context: embedded vs A1111 without LoRA (the engines' pixel parity)",
            "embedded base",
            "a1111 base",
            "close",
        )
    print(
        f"{len(images)} images in {time.perf_counter() - started:.0f} s; "
        f"{REQUEST['width']}x{REQUEST['height']} px, {REQUEST['steps']} steps, {REQUEST['sampler_name']}, "
        f"seed {REQUEST['seed']}"
    )
    print(f"{'check':<72} {'PSNR dB':>8}  {'want':<8} result")
    for label, value, want, ok in checks:
        shown = "inf" if math.isinf(value) else f"{value:.2f}"
        print(f"{label:<72} {shown:>8}  {want:<8} {'PASS' if ok else 'FAIL'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "request": REQUEST,
                "checkpoint": ckpt,
                "lora": lora,
                "checks": [
                    {
                        "check": label,
                        "psnr_db": None if math.isinf(v) else v,
                        "identical": math.isinf(v),
                        "want": w,
                        "pass": ok,
                    }
                    for label, v, w, ok in checks
                ],
            },
            indent=1,
        )
    )
    print(f"wrote {RESULTS}")
    return 0 if all(ok for *_, ok in checks) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="phase", required=True)
    for name in ("prepare", "prove"):
        p = sub.add_parser(name)
        p.add_argument(
            "--models", type=Path, required=True, help="the folder A1111 serves (checkpoints/, loras/...)"
        )
        default_root = Path.home() / ".cache" / "a1111-reference" / "models"
        p.add_argument(
            "--checkpoint", type=Path, default=default_root / "checkpoints" / "rand_sd15.safetensors"
        )
        p.add_argument("--lora", type=Path, default=default_root / "loras" / "rand_lora.safetensors")
        if name == "prepare":
            p.add_argument(
                "--skip-diffusers-writer", action="store_true", help="no save_pretrained folder (saves ~4 GB)"
            )
        else:
            p.add_argument(
                "--a1111", help="A1111's URL, serving --models (else its images saved by an earlier run)"
            )
            p.add_argument(
                "--embedded", help="the embedded engine's URL, serving --models (cross-engine check)"
            )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.phase == "prepare":
        prepare(args)
        return 0
    return prove(args)


if __name__ == "__main__":
    sys.exit(main())
