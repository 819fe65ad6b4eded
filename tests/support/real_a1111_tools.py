"""The real A1111 v1.10.1 with an ESRGAN upscaler and DeepBooru's weights on the volume, for
``tests/a1111/test_tool_models.py`` and ``scripts/record_a1111_tool_transcripts.py``.

The models are random-weight ones built by ``scripts/a1111_tool_models.py`` with A1111's own Python (spandrel's
``RRDBNet``, A1111's ``DeepDanbooruModel``), once per version of that script, and cached like the tiny models.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.real_a1111 import ROOT, built_models, place_model_file, volume_with_tiny_models

TOOLS_SCRIPT = ROOT / "scripts" / "a1111_tool_models.py"
#: as the script writes them, relative to the models folder
ESRGAN_FILE = "upscalers/tiny_esrgan.pth"
DEEPBOORU_FILE = "torch_deepdanbooru/model-resnet_custom_v3.pt"
ESRGAN = "tiny_esrgan"
#: the name of an upscaler file copied to the volume after A1111 started
ESRGAN_LATE = "tiny_esrgan_late"
#: what the random DeepBooru model always answers (the script's FOUND tags, as A1111 writes them)
DEEPBOORU_CAPTION = "lighthouse, ocean view"


def tool_models(install: Path) -> Path:
    """The upscaler and DeepBooru models (about 20 s and 320 MB the first time), cached."""
    return built_models(install, TOOLS_SCRIPT, "tool-models", DEEPBOORU_FILE, cwd=install)


def volume_with_tool_models(install: Path, dest: Path) -> Path:
    """The tiny models' volume plus ``upscalers/tiny_esrgan.pth`` and DeepBooru's weights (hard links)."""
    models = volume_with_tiny_models(install, dest)
    source = tool_models(install)
    for name in (ESRGAN_FILE, DEEPBOORU_FILE):
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        place_model_file(source / name, models / name)
    return models


def copy_upscaler_late(install: Path, models: Path) -> None:
    """Put a second upscaler file on the volume (after A1111 started)."""
    place_model_file(tool_models(install) / ESRGAN_FILE, models / "upscalers" / f"{ESRGAN_LATE}.pth")
