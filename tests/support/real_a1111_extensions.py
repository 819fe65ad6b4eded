"""The real A1111 v1.10.1 with ControlNet and ADetailer, for ``tests/a1111/test_extensions.py`` and the
extension transcript recorder.

Configured by the environment (docs/testing.md), besides ``A1111_DIR`` (``tests.support.real_a1111``):

* ``A1111_EXT_DIR``: what ``scripts/setup_a1111_extensions.sh`` made (``extensions/``, ``venv/``, ``hf_home/``);
* ``A1111_EXT_MODELS``: ``checkpoints/`` (a full-size SD1.5: the extension knows only full-size ControlNets),
  ``ControlNet/`` and ``adetailer/`` (``scripts/a1111_extension_models.py``).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

from tests.support.real_a1111 import CPU_ARGS, place_model_file, start_env

CHECKPOINT = "rand_sd15"
CONTROLNET = "control_rand_sd15"
#: ADetailer detectors of scripts/a1111_extension_models.py: one never detects, one always does
DETECTOR_NONE = "face_rand.pt"
DETECTOR_ALWAYS = "face_always.pt"


def extension_dirs() -> tuple[Path, Path] | None:
    """(A1111_EXT_DIR, A1111_EXT_MODELS), or None when either is not set up."""
    ext_dir = os.environ.get("A1111_EXT_DIR", "").strip()
    models = os.environ.get("A1111_EXT_MODELS", "").strip()
    if not ext_dir or not models:
        return None
    ext, source = Path(ext_dir).expanduser(), Path(models).expanduser()
    if not (ext / "venv" / "bin" / "python").exists() or not (source / "checkpoints").is_dir():
        return None
    return ext, source


#: the mark of the modules that need the extension-enabled A1111 (skipped with the reason otherwise)
NEEDS_EXTENSIONS = pytest.mark.skipif(
    extension_dirs() is None,
    reason="needs A1111_EXT_DIR (scripts/setup_a1111_extensions.sh) and A1111_EXT_MODELS (docs/testing.md)",
)


def prepared(tmp: Path, ext_dir: Path, source: Path) -> tuple[Path, Path]:
    """(models volume, data dir): the models on the volume as the worker keeps them (start.sh links
    ADetailer's folder to ``adetailer/``), the two extensions linked into A1111's data dir."""
    models, data = tmp / "models", tmp / "a1111-data"
    for kind, pattern in (
        ("checkpoints", "*.safetensors"),
        ("ControlNet", "*.safetensors"),
        ("adetailer", "*.pt"),
    ):
        (models / kind).mkdir(parents=True)
        for file in (source / kind).glob(pattern):
            place_model_file(file, models / kind / file.name)
    (data / "extensions").mkdir(parents=True)
    for extension in (ext_dir / "extensions").iterdir():
        (data / "extensions" / extension.name).symlink_to(extension)
    return models, data


def extension_env(install: Path, ext_dir: Path, tmp: Path, models: Path) -> dict[str, str]:
    """start.sh's environment for the extension-enabled A1111: its own venv and HF cache, offline."""
    env = start_env(install, tmp, models)
    env.update(
        A1111_PYTHON=str(ext_dir / "venv" / "bin" / "python"),
        A1111_EXTRA_ARGS=CPU_ARGS,
        HF_HOME=str(ext_dir / "hf_home"),
    )
    return env


def control_image() -> str:
    """A 64x64 PNG with edges (a white disc on black): canny finds its outline."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).ellipse((14, 10, 50, 54), fill="white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
