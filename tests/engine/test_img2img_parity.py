"""The embedded engine's img2img, inpainting and extras reproduce A1111 v1.10.1's pixels.

tests/fixtures/golden-img2img/ holds A1111's images for ``scripts/a1111_parity.py --matrix img2img`` on the
small deterministic checkpoint of tests/support/parity_model.py, and the input images they were made from
(re-record with ``scripts/record_goldens.py --matrix img2img``). Every img2img cell is sent right after the
recorded primer txt2img, as when recording: A1111 samples the VAE posterior from torch's global generator,
which the request before seeds (scripts/a1111_img2img_cells.py). Tolerance: PSNR >= 40 dB.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from scripts import a1111_img2img_cells as cells
from tests.engine.test_golden_parity import TOLERANCE_DB, psnr
from tests.support import parity_model
from tests.support.embedded_engine import _require_engine, run_engine

pytestmark = pytest.mark.engine

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden-img2img"
INDEX: dict[str, Any] = json.loads((GOLDEN / "index.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The engine as a real server process on the parity checkpoint (built here, never committed)."""
    _require_engine()
    models = tmp_path_factory.mktemp("parity-models")
    parity_model.write(models, with_a1111_files=False)
    recorded = INDEX["meta"]["files_sha256"]
    if parity_model.file_hashes(models) != recorded:
        pytest.fail("the parity model built here differs from the goldens' one: re-record them")
    with run_engine(models, models / "engine.log", "--ckpt", parity_model.NAME) as engine:
        yield engine.url


def send(url: str, cell: str, payload: dict[str, Any]) -> httpx.Response:
    path = cells.endpoint(cell)
    if path == "img2img":
        primer = httpx.post(f"{url}/sdapi/v1/txt2img", json=INDEX["meta"]["primer"], timeout=120)
        assert primer.status_code == 200, primer.text
    return httpx.post(f"{url}/sdapi/v1/{path}", json=cells.resolve(payload, GOLDEN), timeout=120)


def images_of(response: httpx.Response) -> list[Image.Image]:
    assert response.status_code == 200, response.text
    body = response.json()
    encoded = body["images"] if "images" in body else [body["image"]]
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in encoded]


@pytest.mark.parametrize("cell", sorted(INDEX["cells"]))
def test_engine_matches_a1111_pixels(engine_url: str, cell: str) -> None:
    entry = INDEX["cells"][cell]
    response = send(engine_url, cell, entry["payload"])
    if entry.get("a1111_error"):
        # A1111 failed on it (a 500): the engine refuses it instead, naming why
        assert 400 <= response.status_code < 500, response.text
        return
    images = images_of(response)
    assert len(images) == len(entry["files"])
    for image, name in zip(images, entry["files"], strict=True):
        value = psnr(image, Image.open(GOLDEN / name))
        assert value >= TOLERANCE_DB, f"{cell}: {value:.1f} dB against A1111's {name}"


@pytest.mark.parametrize(
    ("cell", "change"),
    [
        # the cells fail when what they pin is changed: the fill mode, the only-masked crop, the resize mode
        ("inpaint|whole picture, fill", {"inpainting_fill": 1}),
        ("inpaint|only masked padding 8, original", {"inpaint_full_res_padding": 0}),
        ("img2img|resize 2 wide", {"resize_mode": 1}),
        ("img2img|DPM++ 2M Karras 0.6", {"denoising_strength": 0.5}),
    ],
)
def test_comparison_fails_when_the_request_changes(
    engine_url: str, cell: str, change: dict[str, Any]
) -> None:
    entry = INDEX["cells"][cell]
    golden = Image.open(GOLDEN / entry["files"][0])
    changed = images_of(send(engine_url, cell, {**entry["payload"], **change}))[0]
    assert psnr(changed, golden) < TOLERANCE_DB


def test_without_the_primer_the_posterior_noise_differs(engine_url: str) -> None:
    """Why the primer: after another seed the same img2img request gives other pixels, in A1111 and here."""
    cell = "img2img|DPM++ 2M Karras 0.6"
    entry = INDEX["cells"][cell]
    other = {**INDEX["meta"]["primer"], "seed": 7}
    assert httpx.post(f"{engine_url}/sdapi/v1/txt2img", json=other, timeout=120).status_code == 200
    body = cells.resolve(entry["payload"], GOLDEN)
    unprimed = images_of(httpx.post(f"{engine_url}/sdapi/v1/img2img", json=body, timeout=120))[0]
    assert psnr(unprimed, Image.open(GOLDEN / entry["files"][0])) < TOLERANCE_DB
