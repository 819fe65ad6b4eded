"""Record what the real A1111 v1.10.1 does with ESRGAN upscalers, interrogation and face restoration once
(or before) their weights are on the volume, as ``tests/fixtures/a1111/tools.json`` for the fake.

Launches A1111 through ``start.sh`` (offline, CPU) on the tiny models plus ``upscalers/tiny_esrgan.pth`` and
DeepBooru's weights (``scripts/a1111_tool_models.py``, random weights), and records: its upscaler listing, the
listing after another upscaler file was copied to the volume (is it seen without a restart?), extras with the
ESRGAN, with a file copied after start, and with a built-in whose weights A1111 would download, DeepBooru and
CLIP interrogation, and img2img with ``restore_faces`` without face-restorer weights::

    A1111_DIR=... [A1111_PYTHON=...] .venv/bin/python scripts/record_a1111_tool_transcripts.py [--out DIR]
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.record_a1111_transcripts import Recorder, Scrubber, recording_setup  # noqa: E402
from tests.support import input_images as test_images  # noqa: E402
from tests.support.real_a1111 import launched, start_env  # noqa: E402
from tests.support.real_a1111_tools import (  # noqa: E402
    ESRGAN,
    ESRGAN_LATE,
    copy_upscaler_late,
    volume_with_tool_models,
)

log = logging.getLogger("record_a1111_tool_transcripts")

INIT = test_images.png_b64(64, 64)
BASE: dict[str, Any] = {"prompt": "a face", "steps": 2, "width": 64, "height": 64, "seed": 11}


def _exchanges() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, endpoint, body) recorded after the late copy, in order."""
    extras = {"image": INIT, "upscaling_resize": 2}
    return [
        ("extras_esrgan_from_the_volume", "extra-single-image", {**extras, "upscaler_1": ESRGAN}),
        ("extras_esrgan_copied_after_start", "extra-single-image", {**extras, "upscaler_1": ESRGAN_LATE}),
        # offline, the download fails and A1111 answers with a plain Lanczos resize
        ("extras_builtin_it_would_download", "extra-single-image", {**extras, "upscaler_1": "R-ESRGAN 4x+"}),
        ("interrogate_deepdanbooru_with_weights", "interrogate", {"image": INIT, "model": "deepdanbooru"}),
        ("interrogate_clip_without_blip", "interrogate", {"image": INIT, "model": "clip"}),
        # no CodeFormer weights: A1111 tries to download them, logs the failure and returns the image as it is
        (
            "img2img_restore_faces_without_weights",
            "img2img",
            {**BASE, "init_images": [INIT], "restore_faces": True},
        ),
    ]


def record(url: str, install: Path, models: Path, scrub: Scrubber) -> dict[str, Any]:
    upscalers = scrub(requests.get(url + "/sdapi/v1/upscalers", timeout=60).json())
    copy_upscaler_late(install, models)
    after_copy = [u["name"] for u in requests.get(url + "/sdapi/v1/upscalers", timeout=60).json()]
    recorder = Recorder(url, scrub)
    for name, endpoint, body in _exchanges():
        recorder.call(name, "POST", endpoint, body)
    return {
        "upscalers": upscalers,
        "upscaler_names_after_a_late_copy": after_copy,
        "exchanges": recorder.exchanges,
    }


def main(argv: list[str] | None = None) -> int:
    out, install = recording_setup(__doc__, argv)
    with tempfile.TemporaryDirectory(prefix="a1111-record-tools-") as tmp_name:
        tmp = Path(tmp_name)
        models = volume_with_tool_models(install, tmp / "models")
        scrub = Scrubber({"$MODELS_DIR": models, "$DATA_DIR": tmp / "a1111-data", "$A1111_DIR": install})
        with launched(start_env(install, tmp, models), tmp / "start.log") as started:
            recorded = record(started.url, install, models, scrub)
            recorded["log"] = [line for line in started.log().splitlines() if "Downloading:" in line]
    recorded["log"] = scrub(recorded["log"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "tools.json").write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n")
    log.info("tool transcripts written to %s", out / "tools.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
