"""ControlNet and ADetailer in the built image (docs/extensions.md), with the small A1111 test models.

``with_both``: the image as RunPod runs it, in the recording proxy's namespace (tests/image/test_container.py):
both extensions load, answer their own routes, download nothing at start-up, ADetailer inpaints through a worker
job with a random detector made here by the image's own Python, and a ControlNet copied onto the volume while
A1111 runs is listed without a restart. ``A1111_DISABLED_EXTENSIONS`` leaves each one out of a second start.

A ControlNet generation needs a full-size SD1.5 and ControlNet (the extension builds only full-size networks;
A1111 then takes ~5 GB of memory): with ``A1111_EXT_MODELS`` (scripts/a1111_extension_models.py's folder, as for
tests/a1111/test_extensions.py) a canny unit runs through a worker job too; run the suite under the shared
big-memory lock then (docs/testing.md).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.image.test_container import JOB, runsync
from tests.support.podman import VOLUME, Container, podman, proxy_requests, start_recorded
from tests.support.real_a1111 import place_model_file
from tests.support.real_a1111_extensions import CHECKPOINT, CONTROLNET, control_image

pytestmark = pytest.mark.timeout(3600)

ROOT = Path(__file__).resolve().parents[2]
MODELS_SCRIPT = ROOT / "scripts" / "a1111_extension_models.py"
ENGINE = "http://127.0.0.1:3000"
#: always finds a face-sized box (scripts/a1111_extension_models.py), so ADetailer inpaints
DETECTOR = "face_always.pt"


@pytest.fixture(scope="module")
def volume(image: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny models with ADetailer's random detectors, made by the image's A1111 venv."""
    dest = tmp_path_factory.mktemp("extensions-volume") / "models"
    shutil.copytree(tiny_models, dest)
    podman(
        "run", "--rm", "--network", "none", "--entrypoint", "/opt/a1111/venv/bin/python",
        "-v", f"{dest}:{VOLUME}", "-v", f"{MODELS_SCRIPT}:/tmp/a1111_extension_models.py:ro",
        image, "/tmp/a1111_extension_models.py", VOLUME,
        timeout=600,
    )  # fmt: skip
    assert (dest / "adetailer" / DETECTOR).is_file()
    return dest


@pytest.fixture(scope="module")
def with_both(image: str, volume: Path, recorder: Container) -> Iterator[Container]:
    box = start_recorded(image, volume, recorder)
    try:
        box.wait_healthy(900)
        yield box
    finally:
        box.remove()


def get(box: Container, route: str) -> Any:
    status, body = box.curl(f"{ENGINE}{route}", timeout=60)
    assert status == 200, (route, status, body[-2000:])
    return json.loads(body)


def scripts(box: Container) -> dict[str, list[str]]:
    listed: dict[str, list[str]] = get(box, "/sdapi/v1/scripts")
    return listed


def engine_command(box: Container) -> list[str]:
    line = next(line for line in box.logs().splitlines() if "[start] engine started" in line)
    return shlex.split(line.split(": ", 1)[1])


def test_both_extensions_load_and_answer_their_routes(with_both: Container) -> None:
    for endpoint in ("txt2img", "img2img"):
        assert {"controlnet", "adetailer"} <= set(scripts(with_both)[endpoint]), endpoint
    assert get(with_both, "/controlnet/version") == {"version": 3}
    assert get(with_both, "/adetailer/v1/version") == {"version": "25.3.0"}
    # --ad-no-huggingface: ADetailer lists only its built-in mediapipe models and the volume's detectors
    assert DETECTOR in get(with_both, "/adetailer/v1/ad_model")["ad_model"]
    args = engine_command(with_both)
    assert "--skip-install" in args and "--ad-no-huggingface" in args
    assert args[args.index("--controlnet-dir") + 1] == f"{VOLUME}/ControlNet"


def test_nothing_is_downloaded_at_start_up_with_the_extensions(
    with_both: Container, recorder: Container
) -> None:
    assert proxy_requests(recorder) == []


def test_a_controlnet_copied_onto_the_volume_is_listed_without_a_restart(
    with_both: Container, volume: Path
) -> None:
    before = get(with_both, "/controlnet/model_list")["model_list"]
    assert not [name for name in before if name.startswith("control_copied_sd15")], before
    (volume / "ControlNet" / "control_copied_sd15.safetensors").write_bytes(b"\0" * 4096)
    after = get(with_both, "/controlnet/model_list")["model_list"]
    assert [name for name in after if name.startswith("control_copied_sd15 [")], after


def test_adetailer_inpaints_through_a_worker_job(with_both: Container, recorder: Container) -> None:
    unit = {"ad_model": DETECTOR, "ad_mask_k": 1}
    job = {**JOB, "checkpoint": "tiny_a", "alwayson_scripts": {"ADetailer": {"args": [True, False, unit]}}}
    done = runsync(with_both, job)
    assert done["status"] == "COMPLETED", done
    assert f"ADetailer model: {DETECTOR}" in json.loads(done["output"]["info"])["infotexts"][0]
    assert "ADetailer: nothing detected" not in with_both.logs()
    assert proxy_requests(recorder) == []  # nor at request time


@pytest.fixture(scope="module", params=["controlnet", "adetailer"])
def one_left_out(
    request: pytest.FixtureRequest, image: str, tiny_models: Path
) -> Iterator[tuple[str, Container]]:
    box = Container(
        image,
        env={"WORKER_MODE": "api", "A1111_DISABLED_EXTENSIONS": request.param},
        volumes={tiny_models: VOLUME},
        options=["--network", "none"],
    ).start()
    try:
        box.wait_healthy(900)
        yield request.param, box
    finally:
        box.remove()


def test_a1111_disabled_extensions_leaves_an_installed_one_unloaded(
    one_left_out: tuple[str, Container],
) -> None:
    left_out, box = one_left_out
    kept = {"controlnet", "adetailer"} - {left_out}
    listed = set(scripts(box)["txt2img"])
    assert left_out not in listed and kept <= listed, listed
    route = {"controlnet": "/controlnet/version", "adetailer": "/adetailer/v1/version"}
    assert box.curl(f"{ENGINE}{route[left_out]}", timeout=60)[0] == 404
    args = engine_command(box)
    flag = {"controlnet": "--controlnet-dir", "adetailer": "--ad-no-huggingface"}
    assert flag[left_out] not in args and flag[kept.pop()] in args
    assert (
        f"extension {'sd-webui-controlnet' if left_out == 'controlnet' else 'adetailer'} left out"
        in box.logs()
    )


@pytest.fixture(scope="module")
def full_size(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    source = Path(os.environ.get("A1111_EXT_MODELS", "/nonexistent")).expanduser()
    if not (source / "ControlNet" / f"{CONTROLNET}.safetensors").is_file():
        pytest.skip(
            "a ControlNet generation needs A1111_EXT_MODELS (full-size SD1.5 and ControlNet; docs/testing.md)"
        )
    volume = tmp_path_factory.mktemp("full-size") / "models"
    for kind in ("checkpoints", "ControlNet"):
        (volume / kind).mkdir(parents=True)
        for file in (source / kind).glob("*.safetensors"):
            place_model_file(file, volume / kind / file.name)
    box = Container(
        image,
        env={"WORKER_MODE": "local", "WORKER_DEFAULT_CHECKPOINT": CHECKPOINT},
        volumes={volume: VOLUME},
        options=["--network", "none"],
    ).start()
    try:
        box.wait_healthy(1800)
        yield box
    finally:
        box.remove()


def test_a_controlnet_canny_unit_runs_through_a_worker_job(full_size: Container) -> None:
    unit = {"enabled": True, "module": "canny", "model": CONTROLNET, "image": control_image()}
    job = {**JOB, "checkpoint": CHECKPOINT, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    done = runsync(full_size, job)
    assert done["status"] == "COMPLETED", done
    assert len(done["output"]["images"]) == 2  # the image, then ControlNet's detected map
    infotext = json.loads(done["output"]["info"])["infotexts"][0]
    assert f'ControlNet 0: "Module: canny, Model: {CONTROLNET}' in infotext, infotext
