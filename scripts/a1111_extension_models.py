"""Build random-weight models for the A1111 extensions, locally and deterministically (no download).

Run it with the Python of the extension-enabled A1111 (``scripts/setup_a1111_extensions.sh``: it has torch,
safetensors and ultralytics)::

    python scripts/a1111_extension_models.py DEST --unet-from SD15_CHECKPOINT [--sdxl-from SDXL_CHECKPOINT]

writes (without ``--unet-from`` and ``--sdxl-from``, the detectors only: tests/image makes them with the
image's own Python)

* ``DEST/ControlNet/control_rand_sd15.safetensors``: an SD1.5 ControlNet in the layout of the published ones
  (``control_model.*`` keys, fp16, ~0.7 GB). The extension guesses its architecture from the keys and shapes
  and only knows full-size ones (320 channels), so it cannot be small. Its encoder is the checkpoint's UNet
  encoder (``time_embed``, ``input_blocks``, ``middle_block``), as a ControlNet starts from its base model;
  the hint encoder, the zero convolutions and ``middle_block_out`` get seeded random values instead of zeros,
  so that a unit visibly changes the image.
* ``DEST/adetailer/face_rand.pt``: a YOLOv8n detector (one class, ``face``) built from ultralytics' own model
  definition with seeded random weights: it finds nothing.
* ``DEST/adetailer/face_always.pt``: the same with the class logits' bias raised, so every anchor scores ~1
  and the detector always returns boxes, and its box outputs zeroed, so each box is a square 15 strides wide
  on its anchor (ADetailer's ``ad_mask_k_largest: 1`` keeps only the largest); a way to make ADetailer
  inpaint with a random model.

* with ``--sdxl-from``, ``DEST/ControlNet/control_rand_sdxl_mid.safetensors`` (``--sdxl-variant full``:
  ``control_rand_sdxl_full``): an SDXL ControlNet in the same layout, its encoder (``label_emb`` included)
  copied from the SDXL checkpoint's UNet. sd-webui-controlnet 56cec5b2 takes a file with ``label_emb`` as SDXL
  and picks the network by depth: ``input_blocks.8.1.transformer_blocks.9`` present is the full one
  (``diffusers_xl_*_full``, 10 transformer blocks per attention, ~2.5 GB fp16, ~5 GB in fp32 on a CPU A1111),
  only ``...transformer_blocks.0`` the "mid" one (``diffusers_xl_*_mid``: attention only at the lowest
  resolution, one block; ~1.1 GB fp16). The mid one is the default: with the SDXL checkpoint A1111 already
  holds ~16.7 GiB, and the full one would not fit beside it in 24 GB. Only the UNet's tensors are read (the
  checkpoint is not loaded whole). The file name has ``xl`` in it: the extension also guesses a model's base
  from its name (``sd15`` → SD1.5, ``xl`` → SDXL) and refuses a mismatch with the checkpoint.

Deterministic: the same checkpoint and seed give the same tensors.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger("a1111_extension_models")

UNET_PREFIX = "model.diffusion_model."
#: what a ControlNet copies of its base model's UNet
COPIED = ("time_embed.", "input_blocks.", "middle_block.")
#: output channels of SD1.5's twelve input blocks (each gets a 1x1 zero convolution)
INPUT_BLOCK_CHANNELS = (320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280)
#: the hint encoder: (in, out, stride) of its eight 3x3 convolutions (indices 0, 2, ... 14; SiLU between)
HINT_CONVS = (
    (3, 16, 1),
    (16, 16, 1),
    (16, 32, 2),
    (32, 32, 1),
    (32, 96, 2),
    (96, 96, 1),
    (96, 256, 2),
    (256, 320, 1),
)


#: SDXL: output channels of its nine input blocks, and the blocks whose attention the "mid" ControlNet keeps
SDXL_INPUT_BLOCK_CHANNELS = (320, 320, 320, 320, 640, 640, 640, 1280, 1280)
SDXL_COPIED = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")
MID_ATTENTION = ("input_blocks.7.1.", "input_blocks.8.1.", "middle_block.1.")


def _random(shape: tuple[int, ...], generator: torch.Generator, fan_in: int) -> torch.Tensor:
    return torch.randn(shape, generator=generator) / fan_in**0.5


def controlnet_from(checkpoint: Path, seed: int) -> dict[str, torch.Tensor]:
    """An SD1.5 ControlNet state dict whose encoder is ``checkpoint``'s UNet encoder."""
    weights = load_file(str(checkpoint))
    generator = torch.Generator().manual_seed(seed)
    control: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        inner = key.removeprefix(UNET_PREFIX)
        if key.startswith(UNET_PREFIX) and inner.startswith(COPIED):
            control[f"control_model.{inner}"] = tensor.to(torch.float16)
    if not control:
        raise SystemExit(f"{checkpoint} has no {UNET_PREFIX}* keys: not an SD1.x checkpoint")
    _add_hint_and_zero_convs(control, INPUT_BLOCK_CHANNELS, generator)
    return {key: tensor.to(torch.float16).contiguous() for key, tensor in control.items()}


def _add_hint_and_zero_convs(
    control: dict[str, torch.Tensor], channels: tuple[int, ...], generator: torch.Generator
) -> None:
    """The parts a ControlNet adds to its copy of the encoder, seeded random (not zero: a unit must show)."""
    for index, (c_in, c_out, _stride) in enumerate(HINT_CONVS):
        control[f"control_model.input_hint_block.{index * 2}.weight"] = _random(
            (c_out, c_in, 3, 3), generator, c_in * 9
        )
        control[f"control_model.input_hint_block.{index * 2}.bias"] = torch.zeros(c_out)
    for index, width in enumerate(channels):
        control[f"control_model.zero_convs.{index}.0.weight"] = _random(
            (width, width, 1, 1), generator, width
        )
        control[f"control_model.zero_convs.{index}.0.bias"] = torch.zeros(width)
    control["control_model.middle_block_out.0.weight"] = _random((1280, 1280, 1, 1), generator, 1280)
    control["control_model.middle_block_out.0.bias"] = torch.zeros(1280)


def _kept_in_mid(inner: str) -> bool:
    """Whether the "mid" SDXL ControlNet has this UNet tensor: every res block, attention only in
    ``MID_ATTENTION`` and there only its first transformer block."""
    if ".transformer_blocks." in inner:
        block = int(inner.split(".transformer_blocks.", 1)[1].split(".", 1)[0])
        return inner.startswith(MID_ATTENTION) and block == 0
    attention = inner.startswith(("input_blocks.4.1.", "input_blocks.5.1."))
    return not attention


def sdxl_controlnet_from(checkpoint: Path, seed: int, variant: str) -> dict[str, torch.Tensor]:
    """An SDXL ControlNet (``full`` or ``mid``) whose encoder is ``checkpoint``'s UNet encoder."""
    generator = torch.Generator().manual_seed(seed)
    control: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            inner = key.removeprefix(UNET_PREFIX)
            if not (key.startswith(UNET_PREFIX) and inner.startswith(SDXL_COPIED)):
                continue
            if variant == "full" or _kept_in_mid(inner):
                control[f"control_model.{inner}"] = weights.get_tensor(key).to(torch.float16)
    if "control_model.label_emb.0.0.weight" not in control:
        raise SystemExit(f"{checkpoint} has no {UNET_PREFIX}label_emb: not an SDXL checkpoint")
    _add_hint_and_zero_convs(control, SDXL_INPUT_BLOCK_CHANNELS, generator)
    return {key: tensor.to(torch.float16).contiguous() for key, tensor in control.items()}


def yolo_detectors(dest: Path, seed: int) -> list[Path]:
    """``face_rand.pt`` (finds nothing) and ``face_always.pt`` (always finds boxes): YOLOv8n, one class."""
    # the extension venv's; imported here so that the ControlNet part needs only torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    written = []
    for name, class_bias in (("face_rand.pt", None), ("face_always.pt", 12.0)):
        torch.manual_seed(seed)
        model = YOLO("yolov8n.yaml")
        model.model = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
        model.model.names = {0: "face"}
        if class_bias is not None:
            detect = model.model.model[-1]
            for classes, boxes in zip(detect.cv3, detect.cv2, strict=True):
                torch.nn.init.constant_(classes[-1].bias, class_bias)
                # uniform distance distributions: every box is square, 15 strides wide, on its anchor
                torch.nn.init.zeros_(boxes[-1].weight)
                torch.nn.init.zeros_(boxes[-1].bias)
        path = dest / name
        model.save(str(path))
        written.append(path)
    return written


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--unet-from", type=Path, help="an SD1.5 single-file checkpoint")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--sdxl-from", type=Path, help="an SDXL base single-file checkpoint")
    parser.add_argument("--sdxl-variant", choices=("mid", "full"), default="mid")
    args = parser.parse_args()
    (args.dest / "adetailer").mkdir(parents=True, exist_ok=True)
    (args.dest / "ControlNet").mkdir(parents=True, exist_ok=True)
    if args.unet_from is not None:
        controlnet = args.dest / "ControlNet" / "control_rand_sd15.safetensors"
        save_file(controlnet_from(args.unet_from, args.seed), str(controlnet), metadata={"format": "pt"})
        log.info("%s (%.0f MB)", controlnet, controlnet.stat().st_size / 1e6)
    if args.sdxl_from is not None:
        sdxl = args.dest / "ControlNet" / f"control_rand_sdxl_{args.sdxl_variant}.safetensors"
        weights = sdxl_controlnet_from(args.sdxl_from, args.seed, args.sdxl_variant)
        save_file(weights, str(sdxl), metadata={"format": "pt"})
        log.info("%s (%.0f MB)", sdxl, sdxl.stat().st_size / 1e6)
    for path in yolo_detectors(args.dest / "adetailer", args.seed):
        log.info("%s (%.1f MB)", path, path.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
