"""Write an inpainting (9-channel) or instruct-pix2pix (8-channel) variant of an A1111 single-file checkpoint.

``sd-v1-5-inpainting`` has exactly SD1.5's keys; only the UNet's first convolution
(``model.diffusion_model.input_blocks.0.0.weight``) takes 9 input channels (latent, mask, masked-image
latent) instead of 4, and instruct-pix2pix's 8 (latent, image latent). A1111 v1.10.1 picks its model config
by that shape alone (``sd_models_config.guess_model_config_from_state_dict``: ``v1-inpainting-inference.yaml``
for 9, ``instruct-pix2pix.yaml`` for 8). This script copies a checkpoint tensor by tensor (never more than one
tensor in memory, so a full-size file costs no RAM) and widens that convolution: the original 4 input
channels are kept, the new ones drawn at random (seeded, with the original weights' spread, so the
conditioning visibly changes the image). A tiny model's stored diffusers config is updated to match.

    python scripts/make_inpainting_checkpoint.py SRC.safetensors DST.safetensors [--channels 9] [--seed 1234]

The full-size random SD1.5 (``rand_sd15.safetensors`` of the reference install) becomes the inpainting
checkpoint the parity table in docs/engine.md was measured with; the tests widen the tiny demo model.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.registry.detect import UNET_CONV_IN  # noqa: E402 - after the sys.path line
from worker.registry.pipeline_configs import CONFIG_METADATA_KEY  # noqa: E402
from worker.registry.safetensors_header import TensorInfo, read_header  # noqa: E402

NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32}


def _widened(raw: bytes, info: TensorInfo, channels: int, seed: int) -> tuple[bytes, list[int]]:
    """The conv_in weight ``[out, 4, kh, kw]`` with ``channels - 4`` random input channels appended."""
    if info.dtype not in NUMPY_DTYPES:
        raise SystemExit(f"{UNET_CONV_IN} is {info.dtype}; only F16 and F32 checkpoints are supported")
    weight = np.frombuffer(raw, dtype=NUMPY_DTYPES[info.dtype]).reshape(info.shape)
    if weight.shape[1] != 4:
        raise SystemExit(f"{UNET_CONV_IN} has {weight.shape[1]} input channels; expected a 4-channel UNet")
    extra_shape = (weight.shape[0], channels - 4, *weight.shape[2:])
    extra = np.random.default_rng(seed).standard_normal(extra_shape) * float(weight.astype(np.float64).std())
    wide = np.concatenate([weight, extra.astype(weight.dtype)], axis=1)
    return wide.tobytes(), list(wide.shape)


def _metadata(metadata: dict[str, str], channels: int) -> dict[str, str]:
    """The file's metadata; a stored diffusers config (tiny models) gets the UNet's new input channels."""
    result = dict(metadata)
    if CONFIG_METADATA_KEY in result:
        configs = json.loads(result[CONFIG_METADATA_KEY])
        configs["unet"]["in_channels"] = channels
        result[CONFIG_METADATA_KEY] = json.dumps(configs)
    return result


def widen(src: Path, dst: Path, channels: int = 9, seed: int = 1234) -> None:
    """Copy ``src`` to ``dst`` with a ``channels``-input UNet (same keys and order, deterministic bytes)."""
    header = read_header(src)
    if UNET_CONV_IN not in header.tensors:
        raise SystemExit(f"{src.name} has no {UNET_CONV_IN}: not an A1111 single-file SD checkpoint")
    entries: dict[str, object] = {}
    if header.metadata:
        entries["__metadata__"] = _metadata(header.metadata, channels)
    order = sorted(header.tensors.items(), key=lambda item: item[1].start)
    wide: tuple[bytes, list[int]] | None = None
    offset = 0
    with src.open("rb") as source:
        for key, info in order:
            size = info.end - info.start
            shape = list(info.shape)
            if key == UNET_CONV_IN:
                source.seek(header.data_offset + info.start)
                wide = _widened(source.read(size), info, channels, seed)
                size, shape = len(wide[0]), wide[1]
            entries[key] = {"dtype": info.dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as source, dst.open("wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for key, info in order:
            if key == UNET_CONV_IN and wide is not None:
                out.write(wide[0])
                continue
            source.seek(header.data_offset + info.start)
            _copy(source, out, info.end - info.start)


def _copy(source: BinaryIO, out: BinaryIO, size: int) -> None:
    """``size`` bytes from ``source`` to ``out`` in 16 MB pieces."""
    while size > 0:
        chunk = source.read(min(size, 16 << 20))
        if not chunk:
            raise SystemExit("the source checkpoint is truncated")
        out.write(chunk)
        size -= len(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--channels", type=int, choices=(8, 9), default=9, help="9 inpainting, 8 pix2pix")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    widen(args.src, args.dst, args.channels, args.seed)


if __name__ == "__main__":
    main()
