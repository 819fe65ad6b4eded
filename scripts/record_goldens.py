"""Re-record the A1111 pixel goldens that tests/engine/test_golden_parity.py compares the engine with.

Needs a real A1111 v1.10.1 (CPU) under ``$A1111_ROOT`` (default ``~/.cache/a1111-reference``) and a script
that starts it, ``--serve SCRIPT``, run as ``bash SCRIPT PORT MODELS_DIR`` (default:
``shared/reference-a1111/serve.sh`` beside the checkout, where the team machine keeps one). It writes the
small deterministic checkpoint (tests/support/parity_model.py) with its ``.yaml``, VAE, LoRA and embedding
into a models folder, starts A1111 on it (fresh data dir) with ``--serve``, sends the ``golden`` requests of
scripts/a1111_parity.py, stores the PNGs and ``index.json`` (payloads, A1111's infotexts, the files'
sha256) in tests/fixtures/golden/, and stops A1111.

    python scripts/record_goldens.py [--port 7871] [--serve SCRIPT]

The whole sampler x schedule grid on the same model, for docs/engine.md (not committed):

    python scripts/record_goldens.py --matrix grid --out /tmp/tiny-grid --models /tmp/tiny-models
    python scripts/a1111_parity.py compare --models-dir /tmp/tiny-models --ckpt parity-sd15-tiny \
        --recorded /tmp/tiny-grid --markdown /tmp/tiny-grid.md

Full-size matrices (``--checkpoint``: a file already in ``--models``/checkpoints, which A1111 then serves
alone; nothing is written there and nothing is committed; run under ``flock /tmp/bigmem.lock``, see
docs/engine.md):

    python scripts/record_goldens.py --matrix sdxl-img2img --models MODELS \
        --checkpoint rand_sdxl.safetensors --out /tmp/sdxl-img2img
    python scripts/record_goldens.py --matrix inpainting-model --models MODELS \
        --checkpoint rand_sd15_inpainting.safetensors --out /tmp/inpainting-model
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import a1111_img2img_cells  # noqa: E402 - after the sys.path line
from scripts.a1111_parity import IMAGE_MATRICES, record, requests_for  # noqa: E402
from tests.support import parity_model  # noqa: E402

GOLDEN_DIR = ROOT / "tests" / "fixtures" / "golden"
IMG2IMG_DIR = ROOT / "tests" / "fixtures" / "golden-img2img"
log = logging.getLogger("record_goldens")
#: matrices for full-size checkpoints: recorded for docs/engine.md's tables, never as CI fixtures
FULL_SIZE_MATRICES = ("sdxl-img2img", "inpainting-model", "pix2pix-model")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=7871)
    # ../shared beside the main checkout, or two levels up from a worktree
    bases = (ROOT.parent, ROOT.parent.parent)
    candidates = [base / "shared" / "reference-a1111" / "serve.sh" for base in bases]
    default_serve = next((c for c in candidates if c.is_file()), candidates[0])
    parser.add_argument("--serve", type=Path, default=default_serve)
    parser.add_argument("--out", type=Path, help=f"default: {GOLDEN_DIR} (img2img: {IMG2IMG_DIR})")
    parser.add_argument("--matrix", choices=("golden", "grid", *IMAGE_MATRICES), default="golden")
    parser.add_argument("--models", type=Path, help="write the models here and keep them (default: temp dir)")
    parser.add_argument("--checkpoint", help="a checkpoint file already in MODELS/checkpoints (full size)")
    args = parser.parse_args()
    if args.checkpoint and not (args.models and (args.models / "checkpoints" / args.checkpoint).is_file()):
        parser.error("--checkpoint needs --models holding checkpoints/CHECKPOINT")
    if args.matrix in FULL_SIZE_MATRICES and not (args.checkpoint and args.out):
        parser.error(f"--matrix {args.matrix} needs --checkpoint and --out (full size: never committed)")
    args.out = args.out or (IMG2IMG_DIR if args.matrix == "img2img" else GOLDEN_DIR)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a1111_root = Path(os.environ.get("A1111_ROOT", Path.home() / ".cache" / "a1111-reference"))
    with tempfile.TemporaryDirectory(prefix="goldens-") as tmp:
        models = args.models or Path(tmp)
        models.mkdir(parents=True, exist_ok=True)
        if not args.checkpoint:
            parity_model.write(models)
        serve = ["bash", str(args.serve), str(args.port), str(models)]
        # a fresh data dir: no options left over from earlier runs
        env = {**os.environ, "A1111_DATA_DIR": tempfile.mkdtemp(prefix="a1111-data-", dir=tmp)}
        started = subprocess.run(serve, check=False, timeout=900, env=env)
        pid_file = a1111_root / ("a1111.pid" if args.port == 7860 else f"a1111-{args.port}.pid")
        try:
            if started.returncode != 0:
                raise SystemExit(f"A1111 did not start (serve.sh exit {started.returncode})")
            if args.out.exists():
                shutil.rmtree(args.out)
            requests = requests_for(args.matrix, parity_model.LORA, parity_model.VAE, parity_model.EMBEDDING)
            record(f"http://127.0.0.1:{args.port}", args.out, requests, 600, args.checkpoint)
        finally:
            if pid_file.is_file():
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        index = json.loads((args.out / "index.json").read_text(encoding="utf-8"))
        meta = {
            "checkpoint": args.checkpoint or f"{parity_model.NAME}.safetensors",
            "files_sha256": {} if args.checkpoint else parity_model.file_hashes(models),
            "a1111": "v1.10.1 (82a973c0), CPU, fp32 (--no-half --precision full)",
            "recorded_by": "scripts/record_goldens.py",
        }
        if args.matrix in IMAGE_MATRICES:
            # sent before every img2img cell (a one-step img2img for pix2pix: its txt2img fails)
            first_cell = next(iter(index), "")
            meta["primer"] = a1111_img2img_cells.primer(first_cell)[1]
        document = json.dumps({"meta": meta, "cells": index}, indent=1)
        (args.out / "index.json").write_text(document, encoding="utf-8")
    log.info("wrote %d cells to %s", len(index), args.out)


if __name__ == "__main__":
    main()
