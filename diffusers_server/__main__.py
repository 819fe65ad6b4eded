"""CLI: ``python -m diffusers_server serve --models-dir DIR`` and ``make-demo-models DIR``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    # no abbreviations: "--ho 0.0.0.0" must not slip past start.sh's bind rules as "--host"
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_server", description=__doc__, allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the A1111-compatible /sdapi/v1 server", allow_abbrev=False)
    serve.add_argument(
        "--models-dir", type=Path, required=True, help="root with checkpoints/ loras/ embeddings/ vae/"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--ckpt-dir", type=Path, help="checkpoints folder (default MODELS_DIR/checkpoints)")
    serve.add_argument("--lora-dir", type=Path, help="LoRA folder (default MODELS_DIR/loras)")
    serve.add_argument(
        "--embeddings-dir", type=Path, help="embeddings folder (default MODELS_DIR/embeddings)"
    )
    serve.add_argument("--vae-dir", type=Path, help="VAE folder (default MODELS_DIR/vae)")
    serve.add_argument(
        "--ckpt", help="checkpoint to load at start (any A1111 alias; default: the first listed)"
    )
    serve.add_argument(
        "--clip-tokenizer", type=Path, help="CLIP vocab.json + merges.txt folder (default: openai-clip's)"
    )
    serve.add_argument(
        "--hash-cache", type=Path, help="sha256 cache file (default MODELS_DIR/.diffusers_server_hashes.json)"
    )
    serve.add_argument("--threads", type=int, help="torch CPU threads (pin for byte-identical outputs)")
    serve.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    serve.add_argument(
        "--queue-timeout",
        type=float,
        default=3600.0,
        help="seconds a txt2img waits for the requests ahead of it before a 503 (default 3600)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    demo = sub.add_parser(
        "make-demo-models", help="write tiny random-weight demo models (their images are noise)"
    )
    demo.add_argument("dir", type=Path)
    demo.add_argument("--sdxl", action="store_true", help="also write a tiny SDXL checkpoint")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Nothing in this engine may reach the Hugging Face hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["DIFFUSERS_OFFLINE"] = "1"
    if args.command == "make-demo-models":
        from .demo_models import make_demo_models

        make_demo_models(args.dir, sdxl=args.sdxl)
        return

    # torch, diffusers and transformers are imported by the first model load, in the background: the port
    # opens first (docs/performance.md, cold start)
    import uvicorn

    from .app import create_app
    from .config import ServerConfig

    config = ServerConfig(
        models_dir=args.models_dir,
        host=args.host,
        port=args.port,
        ckpt_dir=args.ckpt_dir,
        lora_dir=args.lora_dir,
        embeddings_dir=args.embeddings_dir,
        vae_dir=args.vae_dir,
        ckpt=args.ckpt,
        clip_tokenizer=args.clip_tokenizer,
        hash_cache=args.hash_cache or args.models_dir / ".diffusers_server_hashes.json",
        threads=args.threads,
        force_cpu=args.cpu,
        queue_timeout_s=args.queue_timeout,
    )
    from worker.routes import embedded_engine_hook  # the product's /worker/v1 routes, same job path

    app = create_app(config, on_app_started=[embedded_engine_hook])
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
