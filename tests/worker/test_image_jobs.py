"""Image jobs end to end over real HTTP: the worker in front of the fake A1111 (recorded behaviour).

img2img and inpainting in every form, extras, png-info and interrogation; the hostile images and URLs, which
must fail before the engine sees anything (the fake records every request, so "nothing was sent" is checked).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support import input_images as ti
from tests.support.fake_a1111 import FakeA1111
from tests.support.fixtures import load_json
from tests.support.model_server import ModelServer, model_server
from worker import image_tools
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.image_tools import INTERROGATION_WEIGHTS
from worker.settings import WorkerSettings

__all__ = ["model_server"]  # the fixture

INIT = ti.png_b64(64, 64)
MASK = ti.mask_png_b64(64, 64)
BASE: dict[str, Any] = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11}


def run(fake: FakeA1111, job_input: dict[str, Any], **overrides: Any) -> Any:
    settings = WorkerSettings.model_validate({"a1111_url": fake.url, "job_timeout_s": 5, **overrides})
    client = A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5, engine_name=settings.engine_name)
    return JobRunner(settings, client).run({"id": "job-1", "input": job_input})


def sent(fake: FakeA1111, endpoint: str) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests_to(endpoint, "POST")]


def size_of(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


@pytest.fixture
def fake(fake_a1111: FakeA1111) -> FakeA1111:
    fake_a1111.png_size = None  # answer at the requested size
    return fake_a1111


def test_native_img2img(fake: FakeA1111) -> None:
    out = run(fake, {**BASE, "init_images": ["data:image/png;base64," + INIT], "denoising_strength": 0.4})
    assert "error" not in out, out
    assert [size_of(image) for image in out["images"]] == [(64, 64)]
    assert out["seeds"] == [11]
    (payload,) = sent(fake, "img2img")
    assert payload["init_images"] == [INIT]  # the prefix dropped, the bytes untouched
    assert payload["denoising_strength"] == 0.4
    assert payload["save_images"] is False and payload["override_settings_restore_afterwards"] is True
    assert sent(fake, "txt2img") == []


@pytest.mark.parametrize(
    ("fill", "number"), [("fill", 0), ("original", 1), ("latent noise", 2), ("latent nothing", 3)]
)
def test_inpainting_in_each_fill_mode_is_post_checked(fake: FakeA1111, fill: str, number: int) -> None:
    job = {**BASE, "init_images": [INIT], "mask": MASK, "inpainting_fill": fill, "inpaint_full_res": False}
    out = run(fake, {**job, "mask_blur": 6})
    assert "error" not in out, out
    (payload,) = sent(fake, "img2img")
    assert payload["inpainting_fill"] == number and payload["mask"] == MASK and payload["mask_blur"] == 6
    info = json.loads(out["info"])
    assert info["extra_generation_params"]["Mask blur"] == 6


def test_a_plain_a1111_body_and_the_peer_envelope(fake: FakeA1111) -> None:
    body = {
        **BASE,
        "init_images": [INIT, INIT],
        "sampler_name": "Euler a",
        "resize_mode": 2,
        "inpainting_fill": 1,
    }
    out = run(fake, body)
    assert "error" not in out, out
    assert len(out["images"]) == 2
    assert any("only apply with a mask" in w for w in out["warnings"])
    assert sent(fake, "img2img")[0]["batch_size"] == 2
    peer = load_json("jobs/images/envelope_img2img.json")["input"]
    peer["payload"].update(steps=2, width=64, height=80, init_images=[ti.jpeg_b64(64, 80)])
    peer["payload"]["override_settings"] = {"sd_model_checkpoint": "demo", "sd_vae": "sdxl_vae.safetensors"}
    out = run(fake, peer)  # its restore_faces: no CodeFormer weights on the (empty) volume, and it says so
    assert out["error"].startswith("model_not_found: restore_faces with CodeFormer needs Codeformer/"), out
    del peer["payload"]["restore_faces"]
    out = run(fake, peer)
    assert "error" not in out, out
    assert sent(fake, "img2img")[1]["scheduler"] == "Karras"


def test_the_post_check_reads_denoising_strength(fake: FakeA1111) -> None:
    """An engine that reports another strength than it was sent fails the job, naming the field."""
    from tests.support import a1111_image_behaviour

    original = a1111_image_behaviour.img2img_extra

    def lying(params: dict[str, Any]) -> dict[str, Any]:
        return {**original(params), "Denoising strength": 0.9}

    a1111_image_behaviour.img2img_extra = lying
    try:
        out = run(fake, {**BASE, "init_images": [INIT], "denoising_strength": 0.4})
    finally:
        a1111_image_behaviour.img2img_extra = original
    assert out["error"].startswith("engine_error: the engine did not generate what the job asked for")
    assert "denoising strength '0.9' instead of 0.4" in out["error"]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"init_images": [INIT, ti.b64(ti.bomb_png())]}, "init_images[1]: declares 12000x12000"),
        ({"init_images": [ti.b64(ti.png_bytes(64, 64)[:100])]}, "init_images[0]: a truncated or corrupt PNG"),
        ({"init_images": [ti.b64(ti.other_format_bytes("GIF"))]}, "init_images[0]: a GIF image"),
        (
            {"init_images": [INIT], "mask": ti.mask_png_b64(32, 32)},
            "mask: mask is 32x32, init_images[0] is 64x64",
        ),
        ({"init_images": [INIT], "mask": "%%%"}, "mask: not base64"),
        (
            {"init_images": [INIT], "mask": ti.b64(ti.png16_gray_bytes(64, 64))},
            "mask: a 16-bit grayscale image",
        ),
        (
            {"init_images": ["https://example.com/cat.png"]},
            "image URLs are off on this worker (WORKER_ALLOW_IMAGE_URLS)",
        ),
    ],
)
def test_hostile_images_fail_before_the_engine_sees_anything(
    fake: FakeA1111, job: dict[str, Any], message: str
) -> None:
    out = run(fake, {**BASE, **job})
    assert out["error"].startswith("input_invalid: ")
    assert message in out["error"]
    assert fake.requests == [], "nothing may reach the engine, not even a listing"


def test_image_urls_when_allowed(fake: FakeA1111, model_server: ModelServer) -> None:
    model_server.add("/cat.png", ti.png_bytes(64, 64))
    model_server.add("/moved.png", redirect_to="https://evil.example/cat.png")
    model_server.add("/huge.png", ti.png_bytes(64, 64) + b"\0" * 5000)
    host = model_server.url.removeprefix("http://")
    allowed = {"allow_image_urls": True, "download_allowed_hosts": host, "image_max_bytes": 4096}
    out = run(fake, {**BASE, "init_images": [model_server.url + "/cat.png"]}, **allowed)
    assert "error" not in out, out
    assert sent(fake, "img2img")[0]["init_images"] == [base64.b64encode(ti.png_bytes(64, 64)).decode()]
    out = run(fake, {**BASE, "init_images": [model_server.url + "/moved.png"]}, **allowed)
    assert (
        "init_images[0]: https://evil.example/cat.png: host not in WORKER_DOWNLOAD_ALLOWED_HOSTS"
        in out["error"]
    )
    out = run(fake, {**BASE, "init_images": [model_server.url + "/huge.png"]}, **allowed)
    assert "over 4,096 (WORKER_IMAGE_MAX_BYTES)" in out["error"]
    out = run(fake, {**BASE, "init_images": [model_server.url + "/cat.png"]}, allow_image_urls=True)
    assert "host not in WORKER_DOWNLOAD_ALLOWED_HOSTS" in out["error"]
    assert len(sent(fake, "img2img")) == 1


def test_an_image_url_has_a_deadline(fake: FakeA1111, model_server: ModelServer) -> None:
    model_server.add("/slow.png", ti.png_bytes(64, 64), trickle_s=0.05)
    host = model_server.url.removeprefix("http://")
    settings = {"allow_image_urls": True, "download_allowed_hosts": host, "image_url_timeout_s": 0.3}
    out = run(fake, {**BASE, "init_images": [model_server.url + "/slow.png"]}, **settings)
    assert "took over 0.3 s (WORKER_IMAGE_URL_TIMEOUT_S)" in out["error"]
    assert sent(fake, "img2img") == []


def test_upscale_native_and_envelope(fake: FakeA1111) -> None:
    out = run(
        fake, {"upscale": {"image": INIT, "upscaler": "lanczos", "scale": 2}, "output": {"format": "jpeg"}}
    )
    assert "error" not in out, out
    (image,) = out["images"]
    assert size_of(image) == (128, 128) and base64.b64decode(image)[:2] == b"\xff\xd8"
    assert out["info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    assert sent(fake, "extra-single-image")[0]["upscaler_1"] == "Lanczos"  # spelled as the engine lists it
    batch = {"imageList": [{"data": INIT, "name": "a"}, {"data": ti.png_b64(32, 16), "name": "b"}]}
    envelope = {
        "api": {"method": "POST", "endpoint": "/sdapi/v1/extra-batch-images"},
        "payload": {**batch, "upscaler_1": "Nearest"},
    }
    out = run(fake, envelope)
    assert [size_of(image) for image in out["images"]] == [(128, 128), (64, 32)]


@pytest.mark.parametrize(
    ("engine", "who"), [("a1111", "A1111"), ("embedded", "the embedded engine"), ("external", "A1111")]
)
def test_an_engine_refusal_names_the_engine_that_refused(fake: FakeA1111, engine: str, who: str) -> None:
    fake.set_fault("extra-single-image", status=400, body={"detail": "upscaling_resize: too large"}, times=1)
    out = run(fake, {"upscale": {"image": INIT, "upscaler": "lanczos", "scale": 2}}, engine=engine)
    assert out["error"] == (
        f"input_invalid: {who} rejected POST /sdapi/v1/extra-single-image with HTTP 400: "
        "upscaling_resize: too large"
    )


def test_an_unknown_upscaler_is_refused_with_the_valid_names(fake: FakeA1111) -> None:
    out = run(fake, {"upscale": {"image": INIT, "upscaler": "4x-UltraSharp"}})
    assert out["error"].startswith("input_invalid: upscaler_1 '4x-UltraSharp' not found")
    assert out["error"].count("Lanczos") == 1 and out["error"].count("Nearest") == 1  # one list, not two
    assert sent(fake, "extra-single-image") == []


def test_png_info(fake: FakeA1111) -> None:
    image = ti.png_b64(16, 16, parameters=ti.INFOTEXT)
    out = run(fake, {"png_info": {"image": image}})
    assert out["info"] == ti.INFOTEXT
    out = run(fake, {"api": {"endpoint": "png-info"}, "payload": {"image": ti.jpeg_b64(8, 8)}})
    assert out["info"] == ""


def test_interrogation_is_refused_without_its_weights(
    fake: FakeA1111, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = {"api": {"endpoint": "/sdapi/v1/interrogate"}, "payload": {"image": INIT, "model": "deepdanbooru"}}
    out = run(fake, job, models_dir=tmp_path)
    assert out["error"] == (
        f"model_not_found: interrogate model 'deepdanbooru' needs torch_deepdanbooru/model-resnet_custom_v3.pt "
        f"in {tmp_path}, which is not there; this worker never downloads weights while a job waits: put the "
        "file(s) on the volume"
    )
    assert sent(fake, "interrogate") == []
    for name in ("BLIP/model_base_caption_capfilt_large.pth", "CLIP/ViT-L-14.pt"):
        (tmp_path / name).parent.mkdir(parents=True)
        (tmp_path / name).write_bytes(b"weights")
    out = run(fake, {"interrogate": {"image": INIT}}, models_dir=tmp_path)
    assert out["error"].startswith(
        "model_not_found: interrogate model 'clip' needs OpenAI's own CLIP/ViT-L-14.pt"
    )
    assert sent(fake, "interrogate") == []  # the clip package would re-download any other file
    # OpenAI's file cannot be in the tests: this stand-in is taken for it
    monkeypatch.setattr(image_tools, "CLIP_VIT_L_14_SHA256", hashlib.sha256(b"weights").hexdigest())
    out = run(fake, {"interrogate": {"image": INIT}}, models_dir=tmp_path)
    # The recorded A1111 has no real weights: it answers 200 with the caption "<error>", which is a failure.
    assert out["error"].startswith("engine_error: the engine could not interrogate the image")
    assert len(sent(fake, "interrogate")) == 1


def test_an_engine_without_an_interrogator(fake: FakeA1111, tmp_path: Path) -> None:
    """The embedded engine has no /interrogate: refused before any call when the worker knows it is in front of
    it, else from the engine's bare 404; A1111's own 404 (a model it does not know) still reads as A1111's."""
    for name in INTERROGATION_WEIGHTS["deepdanbooru"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"weights")
    job = {"interrogate": {"image": INIT, "model": "deepdanbooru"}}
    out = run(fake, job, models_dir=tmp_path, engine="embedded")
    assert out["error"] == (
        "input_invalid: interrogate is not served here: the embedded engine has no interrogator (CLIP, "
        "DeepBooru); interrogation needs A1111 (WORKER_ENGINE=a1111)"
    )
    assert sent(fake, "interrogate") == []
    fake.set_fault("interrogate", status=404, body={"detail": "Not Found"}, times=1)
    out = run(fake, job, models_dir=tmp_path)
    assert out["error"].startswith(
        "input_invalid: the engine has no /sdapi/v1/interrogate route (HTTP 404): "
    )
    assert out["error"].endswith(
        "the embedded engine has no interrogator (CLIP, DeepBooru); interrogation "
        "needs A1111 (WORKER_ENGINE=a1111)"
    )
    fake.set_fault("interrogate", status=404, body={"detail": "Model not found"}, times=1)
    out = run(fake, job, models_dir=tmp_path)
    assert (
        out["error"]
        == "input_invalid: A1111 rejected POST /sdapi/v1/interrogate with HTTP 404: Model not found"
    )
