"""ESRGAN-family upscalers and interrogation with their weights on the volume: the fake replays what the real
A1111 v1.10.1 did (``tests/fixtures/a1111/tools.json``, ``scripts/record_a1111_tool_transcripts.py``), and the
worker's pre-flight, with the real registry, refuses what A1111 would do wrong: an upscaler file it lists only
after a restart, a built-in it would download now (offline: a silent Lanczos resize), a pickle not allowed.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.a1111_behaviour import transcript
from tests.support.fake_a1111 import FakeA1111, FakeData
from tests.support.real_a1111_tools import DEEPBOORU_CAPTION, DEEPBOORU_FILE, ESRGAN, ESRGAN_FILE, ESRGAN_LATE
from tests.worker.test_fake_image_transcripts import _recorded, send_image_exchange
from tests.worker.test_fake_transcripts import AUTH
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.registry import ModelRegistry
from worker.settings import WorkerSettings

TOOLS = transcript("tools")
INIT = TOOLS["exchanges"][0]["body"]["image"]


def exchange(name: str) -> dict[str, Any]:
    return next(e for e in TOOLS["exchanges"] if e["name"] == name)


@pytest.fixture
def fake() -> Iterator[FakeA1111]:
    """A fake serving the recorded A1111's upscalers (``tiny_esrgan`` among them) and DeepBooru's caption."""
    fake = FakeA1111(png_size=None)
    fake.data = FakeData.recorded()
    fake.data.upscalers = copy.deepcopy(TOOLS["upscalers"])
    caption = exchange("interrogate_deepdanbooru_with_weights")["response"]["caption"]
    fake.data.interrogation_captions = {"deepdanbooru": caption}
    fake.auth = (AUTH[0], AUTH[1])
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def test_what_the_real_a1111_did() -> None:
    """The measured facts the pre-flight relies on (docs/registry.md, "Upscalers")."""
    assert ESRGAN in [u["name"] for u in TOOLS["upscalers"]]
    assert ESRGAN_LATE not in TOOLS["upscaler_names_after_a_late_copy"]  # listed only at start
    assert exchange("extras_esrgan_copied_after_start")["status"] == 500
    # a built-in it would download: a 200 with a plain resize, and the download attempt in its log
    assert exchange("extras_builtin_it_would_download")["status"] == 200
    assert any("RealESRGAN/RealESRGAN_x4plus.pth" in line for line in TOOLS["log"])
    assert exchange("interrogate_deepdanbooru_with_weights")["response"]["caption"] == DEEPBOORU_CAPTION
    infotext = exchange("img2img_restore_faces_without_weights")["response"]["info"]["infotexts"][0]
    assert "Face restoration: CodeFormer" in infotext  # claimed, though nothing was restored
    assert any("codeformer-v0.1.0.pth" in line for line in TOOLS["log"])


def test_the_fake_replays_every_recorded_tool_exchange(fake: FakeA1111) -> None:
    for recorded in TOOLS["exchanges"]:
        status, payload = send_image_exchange(fake, recorded)
        wanted = _recorded(recorded)
        if recorded["endpoint"] == "img2img":
            payload["info"] = {k: v for k, v in payload["info"].items() if k in wanted["info"]}
            wanted["info"]["infotexts"] = [
                text.split(", Model hash")[0] for text in wanted["info"]["infotexts"]
            ]
            payload["info"]["infotexts"] = [
                text.split(", Model hash")[0] for text in payload["info"]["infotexts"]
            ]
            (payload, wanted) = (payload["info"]["infotexts"], wanted["info"]["infotexts"])
        assert (status, payload) == (recorded["status"], wanted), recorded["name"]


def put(models: Path, name: str) -> None:
    """A stand-in weight file (a pickle, as the real ones are): the worker never opens it."""
    (models / name).parent.mkdir(parents=True, exist_ok=True)
    (models / name).write_bytes(pickle.dumps({"params_ema": {}}))


def run(fake: FakeA1111, models: Path, job_input: dict[str, Any], **overrides: Any) -> Any:
    fields = {"a1111_url": fake.url, "job_timeout_s": 5, "models_dir": models, "a1111_auth": ":".join(AUTH)}
    settings = WorkerSettings.model_validate({**fields, **overrides})
    client = A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5, auth=AUTH)
    runner = JobRunner(settings, client, provider=ModelRegistry.from_settings(settings))
    return runner.run({"id": "job-tools", "input": job_input})


def sent(fake: FakeA1111) -> list[Any]:
    return [r.body for r in fake.requests_to("extra-single-image", "POST")]


def test_an_esrgan_pth_from_the_volume_is_served_without_allowing_pickles(
    fake: FakeA1111, tmp_path: Path
) -> None:
    """A1111 loads upscalers through spandrel's restricted unpickler: WORKER_ALLOW_PICKLE is not needed."""
    job = {"upscale": {"image": INIT, "upscaler": ESRGAN, "scale": 2}}
    put(tmp_path, ESRGAN_FILE)
    out = run(fake, tmp_path, job)
    assert "error" not in out, out
    assert out["info"] == exchange("extras_esrgan_from_the_volume")["response"]["html_info"]
    assert sent(fake)[0]["upscaler_1"] == ESRGAN


def test_an_upscaler_copied_after_start_needs_a_restart(fake: FakeA1111, tmp_path: Path) -> None:
    put(tmp_path, f"upscalers/{ESRGAN_LATE}.pth")
    out = run(fake, tmp_path, {"upscale": {"image": INIT, "upscaler": ESRGAN_LATE}}, allow_pickle=True)
    assert out["error"].startswith(
        f"model_not_found: upscaler_1 '{ESRGAN_LATE}' is on the volume ({ESRGAN_LATE}.pth) but A1111 does not "
        "list it: A1111 reads its upscaler folders only when it starts, so restart the worker"
    ), out
    assert "tiny_esrgan" in out["error"]  # the valid names
    out = run(
        fake,
        tmp_path,
        {"upscale": {"image": INIT, "upscaler": ESRGAN_LATE}},
        allow_pickle=True,
        engine="embedded",
    )
    assert out["error"].startswith(
        f"input_invalid: upscaler_1 '{ESRGAN_LATE}' is an ESRGAN-family upscaler on the volume "
        f"({ESRGAN_LATE}.pth), which the embedded engine cannot run (WORKER_ENGINE=a1111 can); valid: None, "
        "Lanczos, Nearest"
    ), out
    assert sent(fake) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("R-ESRGAN 4x+", "put RealESRGAN_x4plus.pth in the volume's upscaler folder under RealESRGAN/"),
        ("DAT x4", "put DAT_x4.pth in the volume's upscaler folder under DAT/"),
        ("SwinIR 4x", "put an upscaler file (e.g. 003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth)"),
        ("ScuNET GAN", "put an upscaler file (e.g. scunet_color_real_gan.pth)"),
        ("LDSR", "upscaler_1 'LDSR' downloads its model when first used"),
    ],
)
def test_a_builtin_a1111_would_download_is_refused(
    fake: FakeA1111, tmp_path: Path, name: str, message: str
) -> None:
    out = run(fake, tmp_path, {"upscale": {"image": INIT, "upscaler": name}})
    assert out["error"].startswith("model_not_found: ") and message in out["error"], out
    assert "never downloads while a job waits" in out["error"]
    assert sent(fake) == []


def test_a_builtin_whose_file_is_on_the_volume_is_served(fake: FakeA1111, tmp_path: Path) -> None:
    put(tmp_path, "upscalers/RealESRGAN/RealESRGAN_x4plus.pth")
    out = run(fake, tmp_path, {"upscale": {"image": INIT, "upscaler": "r-esrgan 4x+"}}, allow_pickle=True)
    assert "error" not in out, out
    assert sent(fake)[0]["upscaler_1"] == "R-ESRGAN 4x+"


def test_deepbooru_is_served_when_its_weights_are_on_the_volume(fake: FakeA1111, tmp_path: Path) -> None:
    job = {"interrogate": {"image": INIT, "model": "deepdanbooru"}}
    out = run(fake, tmp_path, job)
    assert out["error"].startswith(
        "model_not_found: interrogate model 'deepdanbooru' needs " + DEEPBOORU_FILE
    )
    put(tmp_path, DEEPBOORU_FILE)
    out = run(fake, tmp_path, job)
    assert out == {"caption": DEEPBOORU_CAPTION}


def sent_generations(fake: FakeA1111) -> list[Any]:
    return [r.body for r in fake.requests_to("txt2img", "POST") + fake.requests_to("img2img", "POST")]


def test_restore_faces_needs_the_restorer_weights_on_the_volume(fake: FakeA1111, tmp_path: Path) -> None:
    job = {"prompt": "a face", "steps": 2, "width": 64, "height": 64, "restore_faces": True}
    out = run(fake, tmp_path, job)
    assert out["error"] == (
        "model_not_found: restore_faces with CodeFormer needs Codeformer/codeformer-v0.1.0.pth, "
        f"GFPGAN/detection_Resnet50_Final.pth, GFPGAN/parsing_parsenet.pth in {tmp_path}, which is not there; "
        "A1111 would try to download it now and, failing, return the images unrestored: put the file(s) on the "
        "volume"
    )
    for name in (
        "Codeformer/codeformer.pth",
        "GFPGAN/detection_Resnet50_Final.pth",
        "GFPGAN/parsing_parsenet.pth",
    ):
        put(tmp_path, name)
    gfpgan = {**job, "override_settings": {"face_restoration_model": "GFPGAN"}}
    out = run(fake, tmp_path, gfpgan)
    assert out["error"].startswith(
        "model_not_found: restore_faces with GFPGAN needs GFPGAN/GFPGANv1.4.pth in "
    ), out
    out = run(fake, tmp_path, {**job, "override_settings": {"face_restoration_model": "RestoreFormer"}})
    assert out["error"].startswith("input_invalid: restore_faces with face_restoration_model 'RestoreFormer'")
    assert sent_generations(fake) == []
    out = run(fake, tmp_path, job)
    assert "error" not in out, out
    (payload,) = sent_generations(fake)
    assert payload["restore_faces"] is True
    put(tmp_path, "GFPGAN/GFPGANv1.4.pth")
    assert "error" not in run(fake, tmp_path, gfpgan)


def test_a_hires_upscaler_a1111_would_download_is_refused_too(fake: FakeA1111, tmp_path: Path) -> None:
    job = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "hires": {"denoising_strength": 0.5}}
    out = run(fake, tmp_path, {**job, "hires": {**job["hires"], "upscaler": "R-ESRGAN 4x+"}})
    assert out["error"].startswith("model_not_found: hires upscaler 'R-ESRGAN 4x+' is an A1111 built-in"), out
    assert sent_generations(fake) == []
    put(tmp_path, ESRGAN_FILE)
    out = run(fake, tmp_path, {**job, "hires": {**job["hires"], "upscaler": ESRGAN}}, allow_pickle=True)
    assert "error" not in out, out
    assert sent_generations(fake)[0]["hr_upscaler"] == ESRGAN
