"""ESRGAN-family upscalers on the volume: which family a file is, and which folders A1111 reads them from.

A1111 v1.10.1 loads every upscaler file through spandrel, whatever its family; its ESRGAN upscaler lists
every ``.pt``/``.pth`` below ``--esrgan-models-path`` (the kind folder, ``upscalers/``) by file stem. The
other families' flags point at sub-folders, where A1111's own built-in names ("R-ESRGAN 4x+", "DAT x4")
find their file by the name it has at its download address instead of downloading it
(``modules/realesrgan_model.py``, ``modules/dat_model.py``). No family lists ``.safetensors`` files.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.registry.safetensors_header import TensorInfo

#: A1111 flag -> folder below the upscaler kind folder ("" is the kind folder itself); start.sh passes these
A1111_UPSCALER_FOLDERS: dict[str, str] = {
    "--esrgan-models-path": "",
    "--realesrgan-models-path": "RealESRGAN",
    "--swinir-models-path": "SwinIR",
    "--dat-models-path": "DAT",
}
#: file extensions A1111's upscalers list (``find_models(ext_filter=[".pt", ".pth"])``)
A1111_UPSCALER_EXT = (".pt", ".pth")

#: (family, a tensor name only that family has), first match wins; spandrel's own detection keys
FAMILY_KEYS: tuple[tuple[str, str], ...] = (
    ("HAT", "layers.0.residual_group.overlap_attn.qkv.weight"),
    ("SwinIR", "layers.0.residual_group.blocks.0.attn.relative_position_index"),
    ("DAT", "before_RG.1.weight"),
    ("ESRGAN", "model.1.sub.0.RDB1.conv1.0.weight"),  # the original ESRGAN layout
    ("ESRGAN", "body.0.rdb1.conv1.weight"),  # BasicSR's RRDBNet (RealESRGAN_x4plus)
    ("ESRGAN", "RRDB_trunk.0.RDB1.conv1.weight"),
    ("Compact", "body.0.weight"),  # RealESRGAN's SRVGGNetCompact (realesr-general-x4v3)
)

SAFETENSORS_NOT_LISTED = (
    "A1111 v1.10.1 lists only .pt/.pth upscaler files (modules/esrgan_model.py), so no engine here can "
    "use a .safetensors upscaler"
)


def upscaler_family(tensors: Mapping[str, TensorInfo]) -> str | None:
    """The upscaler family a file's tensor names show (None: not an upscaler layout we know)."""
    for family, key in FAMILY_KEYS:
        if key in tensors:
            return family
    return None
