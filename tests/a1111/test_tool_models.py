"""Upscaling with an ESRGAN from the volume and DeepBooru interrogation, through the worker, on the real A1111
v1.10.1 launched by start.sh with random-weight models built here (``tests/support/real_a1111_tools.py``).

Also what the pre-flight refuses there: an upscaler file copied after A1111 started (A1111 lists upscalers only
at start), a built-in whose weights A1111 would download now, CLIP interrogation without its weights.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.a1111.conftest import Engine, Names
from tests.support import input_images as ti
from tests.support.real_a1111 import launched, start_env
from tests.support.real_a1111_tools import (
    DEEPBOORU_CAPTION,
    ESRGAN,
    ESRGAN_LATE,
    copy_upscaler_late,
    volume_with_tool_models,
)
from worker.a1111.client import A1111Client
from worker.handler import JobRunner

INIT = ti.png_b64(64, 64)


@pytest.fixture(scope="module")
def tool_engine(install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("a1111-tools")
    models = volume_with_tool_models(install, tmp / "models")
    with launched(start_env(install, tmp, models), tmp / "start.log") as started:
        with A1111Client(started.url) as client:
            names = Names.discover(client.catalog())
        yield Engine(url=started.url, models=models, started=started, names=names)


@pytest.fixture(scope="module")
def runner(tool_engine: Engine) -> JobRunner:
    return tool_engine.runner(allow_pickle=True)  # the ESRGAN and DeepBooru files are pickles, as real ones


def run(runner: JobRunner, job_input: dict[str, Any]) -> Any:
    return runner.run({"id": "a1111-tools", "input": job_input})


def test_an_esrgan_from_the_volume_upscales(runner: JobRunner) -> None:
    out = run(runner, {"upscale": {"image": INIT, "upscaler": ESRGAN, "scale": 2}})
    assert "error" not in out, out
    with Image.open(io.BytesIO(base64.b64decode(out["images"][0]))) as image:
        assert image.size == (128, 128)
    assert out["info"] == f"<p>Postprocess upscale by: 2.0, Postprocess upscaler: {ESRGAN}</p>"


def test_an_upscaler_copied_after_start_needs_a_restart(
    runner: JobRunner, tool_engine: Engine, install: Path
) -> None:
    assert tool_engine.models is not None
    copy_upscaler_late(install, tool_engine.models)
    out = run(runner, {"upscale": {"image": INIT, "upscaler": ESRGAN_LATE}})
    assert out["error"].startswith(f"model_not_found: upscaler_1 '{ESRGAN_LATE}' is on the volume"), out
    assert "restart the worker" in out["error"]


def test_a_builtin_it_would_download_is_refused(runner: JobRunner, tool_engine: Engine) -> None:
    out = run(runner, {"upscale": {"image": INIT, "upscaler": "R-ESRGAN 4x+"}})
    assert out["error"].startswith("model_not_found: upscaler_1 'R-ESRGAN 4x+' is an A1111 built-in"), out
    assert tool_engine.started is not None and "RealESRGAN_x4plus.pth" not in tool_engine.started.log()


def test_deepbooru_tags_through_the_worker(runner: JobRunner) -> None:
    out = run(runner, {"interrogate": {"image": INIT, "model": "deepdanbooru"}})
    assert out == {"caption": DEEPBOORU_CAPTION}


def test_clip_without_its_weights_is_refused_naming_them(runner: JobRunner) -> None:
    out = run(runner, {"interrogate": {"image": INIT}})
    assert out["error"].startswith("model_not_found: interrogate model 'clip' needs "), out
    assert "BLIP/model_base_caption_capfilt_large.pth" in out["error"] and "CLIP/ViT-L-14.pt" in out["error"]
