"""A1111's image endpoint fields are defined once (worker/a1111/img2img_fields.py); everyone agrees with it.

Checked against the real A1111 v1.10.1's ``/openapi.json`` and its ``parameters`` echo, as recorded by
``scripts/record_a1111_images.py``.
"""

from __future__ import annotations

from tests.support.a1111_behaviour import parameter_defaults, transcript
from tests.support.input_images import png_b64
from worker.a1111.img2img_fields import EXTRAS_FIELDS, IMG2IMG_FIELDS
from worker.image_jobs import ExtrasBatchImages, ExtrasSingleImage, Img2ImgJob, Interrogate, PngInfo

NATIVE_ONLY = {"checkpoint", "loras", "vae", "sampler", "clip_skip", "hires", "output"}
NATIVE_ONLY |= {"num_inference_steps", "guidance_scale", "controlnet", "adetailer"}


def test_the_field_list_is_the_real_a1111s() -> None:
    recorded = transcript("openapi_image_fields")
    assert list(recorded["img2img"]) == list(IMG2IMG_FIELDS)  # names and A1111's order
    assert recorded["img2img"] == IMG2IMG_FIELDS  # and the API's defaults
    assert recorded["extra-single-image"] == {**EXTRAS_FIELDS, "image": ""}
    assert set(recorded["extra-batch-images"]) == {*EXTRAS_FIELDS, "imageList"}


def test_the_echo_of_a_request_has_the_same_fields() -> None:
    echoed = next(e for e in transcript("images") if e["name"] == "img2img_minimal")["response"]["parameters"]
    assert list(echoed) == list(IMG2IMG_FIELDS)


def test_the_job_schemas_accept_every_a1111_field() -> None:
    txt2img_only = {
        name for name in Img2ImgJob.model_fields if name.startswith(("hr_", "enable_hr", "firstphase"))
    }
    assert set(Img2ImgJob.model_fields) - NATIVE_ONLY - txt2img_only == set(IMG2IMG_FIELDS)
    body = {
        **IMG2IMG_FIELDS,
        "init_images": [png_b64(8, 8)],
    }  # a plain A1111 body, every field at its default
    assert Img2ImgJob.model_validate(body).denoising_strength == 0.75
    recorded = transcript("openapi_image_fields")
    for model, endpoint in (
        (ExtrasSingleImage, "extra-single-image"),
        (ExtrasBatchImages, "extra-batch-images"),
        (PngInfo, "png-info"),
        (Interrogate, "interrogate"),
    ):
        assert set(model.model_fields) == set(recorded[endpoint]), endpoint


def test_the_fake_a1111_uses_the_same_defaults() -> None:
    assert parameter_defaults("img2img") == IMG2IMG_FIELDS


def test_the_embedded_engine_lists_the_same_img2img_fields_and_defaults() -> None:
    """The engine keeps its own copy (it may not import the worker's job path): it must stay this one."""
    from diffusers_server.img2img_fields import IMG2IMG_FIELDS as ENGINE_FIELDS

    assert list(ENGINE_FIELDS.items()) == list(IMG2IMG_FIELDS.items())
