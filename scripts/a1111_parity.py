"""Pixel parity of the embedded engine with the real A1111 v1.10.1: the same requests to both, PSNR per image.

Two steps, run one after the other (each engine holds a full model in memory):

    # 1. record A1111's images (A1111 serving the checkpoint, e.g. ``serve.sh 7871 MODELS``)
    python scripts/a1111_parity.py record --url http://127.0.0.1:7871 --out /tmp/parity [--matrix table]
    # 2. run the same requests on the embedded engine in-process and compare
    python scripts/a1111_parity.py compare --models-dir MODELS --ckpt rand_sd15 --recorded /tmp/parity \\
        [--clip-tokenizer DIR] [--markdown docs-table.md]

``--matrix table`` (for a full-size model) is every sampler on its Automatic schedule, every schedule type on
Euler and DPM++ 2M, and the feature cells (batch, VAE, LoRA, embedding, clip skip, long prompt, BREAK, AND,
prompt editing, alternation, hires fix, variation seeds, ENSD, tiling...); ``--matrix grid`` is every sampler
x every schedule type; ``--matrix golden`` is the set the CI goldens pin (``scripts/record_goldens.py``);
``--matrix sdxl`` a few samplers and features for a full-size SDXL file (``--lora rand_lora_xl``).
``--matrix sdxl-img2img`` img2img and inpainting on that SDXL file; ``--matrix inpainting-model`` an
inpainting (9-channel) checkpoint's cells (``scripts/make_inpainting_checkpoint.py``),
``--matrix pix2pix-model`` an instruct-pix2pix (8-channel) one's; all are recorded by ``record_goldens.py``.
``compare`` prints a table, writes ``bench/results/parity.json``
and, with ``--markdown``, the sampler x schedule table for docs/engine.md. Stdlib + the engine's own
dependencies; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import a1111_img2img_cells  # noqa: E402 - after the sys.path line

log = logging.getLogger("parity")
IMAGE_MATRICES = ("img2img", "img2img-grid", "sdxl-img2img", "inpainting-model", "pix2pix-model")

SAMPLERS = (
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
    "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
    "PLMS", "UniPC", "LCM",
)  # fmt: skip
SCHEDULES = (
    "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
    "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
)  # fmt: skip
BASE: dict[str, Any] = {
    "prompt": "a lighthouse on a cliff at dusk, (oil painting:1.2), detailed",
    "negative_prompt": "blurry, lowres",
    "steps": 4,
    "cfg_scale": 7.0,
    "width": 64,
    "height": 64,
    "seed": 1234,
    "batch_size": 1,
}


def grid_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every sampler x every schedule type."""
    for sampler in SAMPLERS:
        for schedule in SCHEDULES:
            yield f"{sampler}|{schedule}", {**BASE, "sampler_name": sampler, "scheduler": schedule}


def feature_requests(
    base: dict[str, Any], lora: str, vae: str, embedding: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """One cell per feature, on Euler a / DPM++ 2M Karras unless stated."""
    prompt = base["prompt"]
    euler_a = {**base, "sampler_name": "Euler a", "scheduler": "Automatic"}
    dpm = {**base, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    hires_latent = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.6, "hr_upscaler": "Latent"}
    yield "feature|size 24x40 (odd latent sides)", {**dpm, "width": 24, "height": 40}
    yield "feature|batch of 2 (Euler a)", {**euler_a, "batch_size": 2}
    yield "feature|batch of 2 (DPM++ SDE)", {**base, "sampler_name": "DPM++ SDE", "batch_size": 2}
    yield "feature|VAE", {**dpm, "override_settings": {"sd_vae": vae}}
    yield "feature|LoRA 0.8", {**dpm, "prompt": f"{prompt} <lora:{lora}:0.8>"}
    yield "feature|LoRA te 1 unet 0.5", {**dpm, "prompt": f"{prompt} <lora:{lora}:1:0.5>"}
    yield "feature|embedding", {**dpm, "prompt": f"{embedding}, {prompt}"}
    yield "feature|clip skip 2", {**dpm, "override_settings": {"CLIP_stop_at_last_layers": 2}}
    yield "feature|long prompt (2 chunks)", {**dpm, "prompt": ", ".join([prompt] * 6)}
    yield "feature|BREAK", {**dpm, "prompt": f"{prompt} BREAK a stormy sea, (moonlight:0.8)"}
    long_negative = ", ".join(["blurry, lowres, jpeg artifacts, watermark"] * 12)
    yield "feature|negative longer than prompt (separate passes)", {**dpm, "negative_prompt": long_negative}
    yield "feature|LoRA tag in the negative (text)", {**dpm, "negative_prompt": f"<lora:{lora}:1> blurry"}
    yield "feature|AND with weights", {**dpm, "prompt": f"{prompt} AND a stormy sea:0.6 AND moonlight:1.3"}
    yield "feature|AND parts of different lengths", {**dpm, "prompt": f"{', '.join([prompt] * 6)} AND a boat"}
    yield "feature|prompt weight without AND", {**dpm, "prompt": f"{prompt}:1.4"}
    edited = "a [lighthouse:castle:0.5] on a cliff at [dusk::3], [oil painting:watercolor:2]"
    yield "feature|prompt editing", {**dpm, "prompt": edited}
    yield "feature|prompt editing (Heun, second order)", {**base, "sampler_name": "Heun", "prompt": edited}
    yield "feature|alternation", {**euler_a, "prompt": "a [lighthouse|castle|tower] at dusk, [red|blue] sky"}
    yield "feature|hires latent x1.5", {**dpm, **hires_latent}
    yield "feature|hires latent + prompt editing", {**dpm, **hires_latent, "prompt": edited}
    yield (
        "feature|hires Lanczos 96x80 (crop)",
        {
            **euler_a,
            "enable_hr": True,
            "hr_resize_x": 96,
            "hr_resize_y": 80,
            "denoising_strength": 0.5,
            "hr_upscaler": "Lanczos",
            "hr_second_pass_steps": 3,
        },
    )
    yield "feature|variation seed 0.3", {**euler_a, "subseed": 99, "subseed_strength": 0.3}
    yield "feature|seed resize from 96x48", {**dpm, "seed_resize_from_w": 96, "seed_resize_from_h": 48}
    yield "feature|ENSD 31337 (Euler a)", {**euler_a, "override_settings": {"eta_noise_seed_delta": 31337}}
    yield "feature|tiling", {**dpm, "tiling": True}


def table_requests(lora: str, vae: str, embedding: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """For a full-size model (each cell costs seconds on a CPU): every sampler on its Automatic schedule,
    every schedule type on Euler and on DPM++ 2M, then the feature cells."""
    for sampler in SAMPLERS:
        yield f"{sampler}|Automatic", {**BASE, "sampler_name": sampler, "scheduler": "Automatic"}
    for sampler in ("Euler", "DPM++ 2M"):
        for schedule in SCHEDULES[1:]:
            yield f"{sampler}|{schedule}", {**BASE, "sampler_name": sampler, "scheduler": schedule}
    yield from feature_requests(BASE, lora, vae, embedding)


GOLDEN_BASE = {**BASE, "prompt": "a red fox in the snow", "negative_prompt": "blurry", "steps": 5}


def golden_requests(lora: str, vae: str, embedding: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The set the CI goldens pin (small model): samplers on a range of schedule types, then the features."""
    cases = [
        ("Euler a", "Automatic"),
        ("Euler", "Automatic"),
        ("DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE", "Exponential"),
        ("DPM++ SDE", "Karras"),
        ("Heun", "Beta"),
        ("DPM2 a", "Align Your Steps"),
        ("LMS", "Polyexponential"),
        ("DPM fast", "Automatic"),
        ("DPM++ 3M SDE", "SGM Uniform"),
        ("DDIM", "Automatic"),
        ("UniPC", "Automatic"),
        ("PLMS", "Automatic"),
        ("LCM", "Normal"),
        ("Restart", "KL Optimal"),
        ("DPM++ 2S a", "Simple"),
    ]
    for sampler, schedule in cases:
        yield f"{sampler}|{schedule}", {**GOLDEN_BASE, "sampler_name": sampler, "scheduler": schedule}
    yield from feature_requests(GOLDEN_BASE, lora, vae, embedding)


def sdxl_requests(lora: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Full-size SDXL (each cell costs tens of seconds on a CPU): a few samplers and the prompt features."""
    dpm = {**BASE, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    for sampler in ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "Heun"):
        yield f"{sampler}|Automatic", {**BASE, "sampler_name": sampler, "scheduler": "Automatic"}
    yield "DPM++ 2M|Karras", dpm
    yield "feature|seed 2", {**dpm, "seed": 2}
    # lora_functional: A1111 applies the LoRA in the forward pass instead of keeping an fp32 backup of every
    # patched SDXL layer (~14 GB more); the same sums up to fp32 rounding, and what the engine always does.
    yield (
        "feature|LoRA 0.8",
        {
            **dpm,
            "prompt": f"{BASE['prompt']} <lora:{lora}:0.8>",
            "override_settings": {"lora_functional": True},
        },
    )
    yield "feature|empty negative (zeros)", {**dpm, "negative_prompt": ""}
    yield (
        "feature|clip skip 2 (CLIP-L with sdxl_clip_l_skip)",
        {
            **dpm,
            "override_settings": {"CLIP_stop_at_last_layers": 2, "sdxl_clip_l_skip": True},
        },
    )
    yield "feature|AND with weights", {**dpm, "prompt": f"{BASE['prompt']} AND a stormy sea:0.6"}
    yield "feature|prompt editing", {**dpm, "prompt": "a [lighthouse:castle:0.5] on a cliff at dusk"}
    yield (
        "feature|hires latent x1.5",
        {
            **dpm,
            "enable_hr": True,
            "hr_scale": 1.5,
            "denoising_strength": 0.6,
            "hr_upscaler": "Latent",
        },
    )


def requests_for(
    matrix: str, lora: str = "rand_lora", vae: str = "rand_vae.safetensors", embedding: str = "rand_emb"
) -> list[tuple[str, dict[str, Any]]]:
    if matrix == "golden":
        return list(golden_requests(lora, vae, embedding))
    if matrix == "grid":
        return list(grid_requests())
    if matrix == "sdxl":
        return list(sdxl_requests(lora))
    if matrix == "img2img":
        cells = a1111_img2img_cells
        return [*cells.img2img_requests(), *cells.inpaint_requests(), *cells.extras_requests()]
    if matrix == "img2img-grid":
        return list(a1111_img2img_cells.grid_requests())
    if matrix == "sdxl-img2img":
        return list(a1111_img2img_cells.sdxl_requests())
    if matrix == "inpainting-model":
        return list(a1111_img2img_cells.inpainting_model_requests())
    if matrix == "pix2pix-model":
        return list(a1111_img2img_cells.pix2pix_model_requests())
    return list(table_requests(lora, vae, embedding))


def file_stem(cell: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in cell)


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return float("nan")
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else min(99.0, 10 * math.log10(255.0**2 / mse))


def _post(url: str, body: dict[str, Any], timeout: float) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def record(
    url: str, out: Path, requests: list[tuple[str, dict[str, Any]]], timeout: float, checkpoint: str | None
) -> None:
    """POST each request to A1111 and keep its images (PNG) and info."""
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint:
        _post(f"{url}/sdapi/v1/options", {"sd_model_checkpoint": checkpoint}, timeout)
    # A1111 does not restore override_settings keys that its config.json lacks (a fresh data dir): they would
    # stick for every later request. Put each overridden key back to its value from before the run.
    # Live previews never change the pixels; A1111's SDXL preview model would be downloaded (offline: fails).
    _post(f"{url}/sdapi/v1/options", {"live_previews_enable": False}, timeout)
    with urllib.request.urlopen(f"{url}/sdapi/v1/options", timeout=timeout) as response:
        baseline = json.loads(response.read())
    index: dict[str, Any] = {}
    cells = a1111_img2img_cells
    if any(cells.endpoint(cell) != "txt2img" for cell, _ in requests):
        cells.write_inputs(out)
    for cell, payload in requests:
        started = time.perf_counter()
        overridden = payload.get("override_settings") or {}
        path = cells.endpoint(cell)
        if path == "img2img":  # see a1111_img2img_cells: the posterior noise's generator
            primer_path, primer = cells.primer(cell)
            _post(f"{url}/sdapi/v1/{primer_path}", cells.resolve(primer, out), timeout)
        body = {**cells.resolve(payload, out), "override_settings_restore_afterwards": True}
        try:
            result = _post(f"{url}/sdapi/v1/{path}", body, timeout)
        except urllib.error.HTTPError as exc:  # A1111 refused or failed: the engine must refuse too
            index[cell] = {"payload": payload, "files": [], "a1111_error": exc.code}
            log.info("%-45s A1111 HTTP %d: %s", cell, exc.code, exc.read()[:300])
            continue
        if overridden:
            _post(f"{url}/sdapi/v1/options", {k: baseline[k] for k in overridden}, timeout)
        files = []
        for i, image in enumerate(result.get("images") or [result["image"]]):
            name = f"{file_stem(cell)}-{i}.png"
            (out / name).write_bytes(base64.b64decode(image))
            files.append(name)
        info = json.loads(result["info"]) if path != "extra-single-image" else {}
        index[cell] = {"payload": payload, "files": files, "infotexts": info.get("infotexts", [])}
        log.info("%-45s %d image(s) in %.1f s", cell, len(files), time.perf_counter() - started)
    (out / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def compare(
    models_dir: Path, ckpt: str, recorded: Path, clip_tokenizer: Path | None, threads: int
) -> list[dict[str, Any]]:
    """Run the recorded requests on the embedded engine in-process; PSNR of each image against A1111's."""
    import torch
    from PIL import Image

    from diffusers_server.config import ServerConfig
    from diffusers_server.engine import Engine

    torch.set_num_threads(threads)
    engine = Engine(
        ServerConfig(models_dir=models_dir, ckpt=ckpt, clip_tokenizer=clip_tokenizer, force_cpu=True)
    )
    engine.load_default()
    if engine.load_error:
        raise SystemExit(f"engine could not load {ckpt}: {engine.load_error}")
    index = json.loads((recorded / "index.json").read_text(encoding="utf-8"))
    index = index.get("cells", index)  # record_goldens.py wraps the cells with its "meta"
    rows = []
    for cell, entry in index.items():
        started = time.perf_counter()
        try:
            result = _run_cell(engine, cell, entry, recorded)
        except Exception as exc:  # report the cell, keep going
            rows.append(
                {"cell": cell, "psnr": None, "min_psnr": None, "error": f"{type(exc).__name__}: {exc}"}
            )
            log.info("%-45s ERROR %s", cell, exc)
            continue
        values = []
        for name, ours in zip(entry["files"], result["images"], strict=False):
            theirs = Image.open(recorded / name).convert("RGB")
            mine = Image.open(io.BytesIO(base64.b64decode(ours))).convert("RGB")
            values.append(psnr(theirs, mine))
        if len(result["images"]) != len(entry["files"]):
            values.append(float("nan"))
        row = {"cell": cell, "psnr": min(values) if values else None, "images": len(values)}
        rows.append(row)
        log.info("%-45s %6.2f dB (%.1f s)", cell, row["psnr"] or float("nan"), time.perf_counter() - started)
    return rows


def _run_cell(engine: Any, cell: str, entry: dict[str, Any], recorded: Path) -> dict[str, Any]:
    """One recorded request on the engine, on the path A1111 served it (img2img after the primer)."""
    from diffusers_server.schemas import Img2ImgRequest, Txt2ImgRequest

    cells = a1111_img2img_cells
    payload = cells.resolve(entry["payload"], recorded)
    path = cells.endpoint(cell)
    if path == "txt2img":
        return engine.txt2img(Txt2ImgRequest(**payload))  # type: ignore[no-any-return]
    if path == "img2img":
        primer_path, primer = cells.primer(cell)
        if primer_path == "txt2img":
            engine.txt2img(Txt2ImgRequest(**primer))
        else:
            engine.img2img(Img2ImgRequest(**cells.resolve(primer, recorded)))
        return engine.img2img(Img2ImgRequest(**payload))  # type: ignore[no-any-return]
    from diffusers_server.schemas import ExtrasSingleRequest

    images, _ = engine.extras(ExtrasSingleRequest(**payload), [("image", payload["image"])])
    return {"images": images}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The sampler x schedule grid and the feature rows, PSNR in dB (99 = identical)."""
    by_cell = {r["cell"]: r for r in rows}

    def fmt(row: dict[str, Any] | None) -> str:
        if row is None:
            return "-"
        if row.get("error"):
            return "error"
        value = row["psnr"]
        return "∞" if value >= 99 else f"{value:.1f}"

    lines = ["| sampler \\ schedule | " + " | ".join(SCHEDULES) + " |", "|---" * (len(SCHEDULES) + 1) + "|"]
    for sampler in SAMPLERS:
        cells = [fmt(by_cell.get(f"{sampler}|{schedule}")) for schedule in SCHEDULES]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += ["", "| feature | PSNR (dB) |", "|---|---|"]
    lines += [
        f"| {r['cell'].split('|', 1)[1]} | {fmt(r)} |" for r in rows if r["cell"].startswith("feature|")
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--url", required=True)
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument(
        "--matrix", choices=("table", "grid", "golden", "sdxl", *IMAGE_MATRICES), default="table"
    )
    rec.add_argument("--checkpoint", help="POST /options sd_model_checkpoint first (A1111 title or name)")
    rec.add_argument("--lora", default="rand_lora")
    rec.add_argument("--vae", default="rand_vae.safetensors")
    rec.add_argument("--embedding", default="rand_emb")
    rec.add_argument("--timeout", type=float, default=600)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--models-dir", type=Path, required=True)
    cmp_.add_argument("--ckpt", required=True)
    cmp_.add_argument("--recorded", type=Path, required=True)
    cmp_.add_argument("--clip-tokenizer", type=Path)
    cmp_.add_argument("--threads", type=int, default=2)
    cmp_.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "record":
        requests = requests_for(args.matrix, args.lora, args.vae, args.embedding)
        record(args.url, args.out, requests, args.timeout, args.checkpoint)
        return
    rows = compare(args.models_dir, args.ckpt, args.recorded, args.clip_tokenizer, args.threads)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "parity.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    below = [r for r in rows if r.get("error") or (r["psnr"] is not None and r["psnr"] < 40)]
    log.info("%d cells, %d below 40 dB or failed: %s", len(rows), len(below), [r["cell"] for r in below])
    if args.markdown:
        args.markdown.write_text(markdown(rows), encoding="utf-8")


if __name__ == "__main__":
    main()
