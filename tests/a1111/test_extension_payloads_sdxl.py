"""The network-volume worker's SDXL ControlNet example payloads on the real A1111 v1.10.1 with both extensions,
in every job form (tests/support/extension_payloads.py), on the full-size random SDXL checkpoint.

Needs ``A1111_EXT_SDXL_MODELS``: ``checkpoints/rand_sdxl.safetensors`` (the reference install's
``make_models.py --sdxl``) and ``ControlNet/control_rand_sdxl_mid.safetensors`` and
``ControlNet/control_rand_sd15.safetensors`` (``scripts/a1111_extension_models.py``), besides what
tests/a1111/test_extensions.py needs. The volume holds them under the peer's names: ``sd_xl_base_1.0``, its VAE
as ``sdxl_vae.safetensors``, the SDXL ControlNet as ``diffusers_xl_canny_full`` (a "mid" one stands in for the
full one: the full one would not fit in this machine's memory beside SDXL, docs/extensions.md) and the SD1.5 one
as ``control_v11p_sd15_canny``. A1111 with SDXL holds ~17 GiB: run it alone under the big-memory lock
(docs/testing.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.extension_payloads import (
    Case,
    edge_image,
    peer,
    peer_volume,
    registry_runner,
    run_case,
    runnable,
    sdxl_cases,
    small,
)
from tests.support.real_a1111 import Launched, launched
from tests.support.real_a1111_extensions import extension_dirs, extension_env
from worker.handler import JobRunner


def sdxl_models() -> Path | None:
    """``A1111_EXT_SDXL_MODELS`` when it holds the SDXL checkpoint and both ControlNets."""
    value = os.environ.get("A1111_EXT_SDXL_MODELS", "").strip()
    folder = Path(value).expanduser() if value else None
    needed = (
        "checkpoints/rand_sdxl.safetensors",
        *(f"ControlNet/{name}.safetensors" for name in CONTROLNETS),
    )
    return folder if folder and all((folder / n).exists() for n in needed) else None


CONTROLNETS = ("control_rand_sdxl_mid", "control_rand_sd15")
pytestmark = pytest.mark.skipif(
    extension_dirs() is None or sdxl_models() is None,
    reason="needs A1111_EXT_DIR, A1111_EXT_MODELS and A1111_EXT_SDXL_MODELS (docs/testing.md)",
)

IMAGE = edge_image()
CASES = sdxl_cases(IMAGE)
FORMS = ("envelope", "a1111", "native")


@pytest.fixture(scope="module")
def started(install: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    dirs, source = extension_dirs(), sdxl_models()
    assert dirs is not None and source is not None
    tmp = tmp_path_factory.mktemp("payloads-sdxl")
    checkpoint = source / "checkpoints" / "rand_sdxl.safetensors"
    files = [
        ("checkpoints", "sd_xl_base_1.0.safetensors", checkpoint),
        (
            "ControlNet",
            "diffusers_xl_canny_full.safetensors",
            source / "ControlNet" / f"{CONTROLNETS[0]}.safetensors",
        ),
        (
            "ControlNet",
            "control_v11p_sd15_canny.safetensors",
            source / "ControlNet" / f"{CONTROLNETS[1]}.safetensors",
        ),
    ]
    models = peer_volume(tmp, dirs[0], files, (checkpoint, "sdxl_vae.safetensors"))
    env = extension_env(install, dirs[0], tmp, models)
    with launched(env, tmp / "start.log", timeout_s=1200) as running:
        # live previews would fetch SDXL's approximate VAE from the internet at the first request
        requests.post(f"{running.url}/sdapi/v1/options", json={"live_previews_enable": False}, timeout=60)
        yield running


@pytest.fixture(scope="module")
def runner(started: Launched) -> JobRunner:
    return registry_runner(started)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_peer_sdxl_payload_in_every_form(
    runner: JobRunner, started: Launched, case: Case, form: str
) -> None:
    run_case(runner, started, case, form)


def test_without_the_worker_a1111_drops_the_sd15_unit_on_sdxl_silently(started: Launched) -> None:
    """What pre-flight prevents: sent straight to A1111, the documented payload generates without the unit."""
    payload = runnable(small(peer("peer_img2img_controlnet_doc"), IMAGE))["input"]["payload"]
    answer = requests.post(f"{started.url}/sdapi/v1/img2img", json=payload, timeout=900)
    assert answer.status_code == 200, answer.text[:500]
    assert len(answer.json()["images"]) == 1  # no detected map: the unit was not applied
    assert "is not compatible with sd model" in started.log()
