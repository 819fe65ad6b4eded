"""Extras (upscaling), png-info and interrogation: one engine call each, with their images checked first.

A job of these kinds runs parse → check images → check names → call → deliver; there is nothing to
pre-flight but the upscaler names and nothing to post-check but the image count. Upscalers are checked
against the engine's own ``/sdapi/v1/upscalers`` (refetched once on a miss), as A1111 otherwise fails with
a bare 500 ``could not find upscaler named ...``.

Interrogation needs weights A1111 would download on first use (``modules/interrogate.py``,
``modules/deepbooru.py``): the worker never lets a job trigger a download, so ``interrogate`` is refused,
naming the missing file and where it belongs, unless ``INTERROGATION_WEIGHTS`` are all on the volume (start.sh
gives A1111 the volume's ``BLIP/``, ``CLIP/`` and ``torch_deepdanbooru/``). CLIP's ``ViT-L-14.pt`` must be
OpenAI's own file: the ``clip`` package re-downloads any other (its sha256 is pinned in its address), so it is
hashed once per file version and refused when it differs. The
embedded engine has no interrogator at all (no ``/sdapi/v1/interrogate`` route): refused there whatever the
volume holds, and an engine answering a tool's route with a bare 404 is reported as lacking that route.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from worker.a1111.client import A1111Client
from worker.errors import EngineFailed, InputInvalid, ModelNotFound
from worker.image_jobs import ImageToolRequest
from worker.model_types import ModelProvider
from worker.output.images import convert_images
from worker.preflight.matching import match_name
from worker.preflight.upscalers import resolve_upscaler

#: model → files (relative to the models folder) A1111 loads for it, none of which a job may download
INTERROGATION_WEIGHTS: dict[str, tuple[str, ...]] = {
    "clip": ("BLIP/model_base_caption_capfilt_large.pth", "CLIP/ViT-L-14.pt"),
    "deepdanbooru": ("torch_deepdanbooru/model-resnet_custom_v3.pt",),
}
_UPSCALER_FIELDS = ("upscaler_1", "upscaler_2")


#: the sha256 ``clip.load("ViT-L/14")`` requires of ``CLIP/ViT-L-14.pt`` (the clip package's download address)
CLIP_VIT_L_14_SHA256 = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
_CLIP_FILE = "CLIP/ViT-L-14.pt"


def missing_interrogation_weights(model: str, models_dir: Path) -> list[str]:
    return [name for name in INTERROGATION_WEIGHTS[model] if not (models_dir / name).is_file()]


@functools.lru_cache(maxsize=4)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """A file's sha256, once per (size, mtime) version: the CLIP file is 890 MB."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_clip_file(models_dir: Path) -> None:
    path = models_dir / _CLIP_FILE
    stat = path.stat()
    if _sha256(path, stat.st_size, stat.st_mtime_ns) != CLIP_VIT_L_14_SHA256:
        raise ModelNotFound(
            f"interrogate model 'clip' needs OpenAI's own {_CLIP_FILE} (sha256 {CLIP_VIT_L_14_SHA256}); the "
            f"one in {models_dir} differs, and A1111 would download the right one now: replace it",
            details={"missing": [_CLIP_FILE]},
        )


#: why an engine may lack a tool's route, and what serves it instead
_MISSING_ROUTE_HINTS: dict[str, str] = {
    "interrogate": (
        "the embedded engine has no interrogator (CLIP, DeepBooru); interrogation needs A1111 "
        "(WORKER_ENGINE=a1111)"
    ),
}


def check_interrogation(body: dict[str, Any], models_dir: Path, *, engine_kind: str) -> None:
    """Refuse an interrogation the engine cannot do: none on the embedded engine, none without weights."""
    if engine_kind == "embedded":
        raise InputInvalid(f"interrogate is not served here: {_MISSING_ROUTE_HINTS['interrogate']}")
    model = str(body.get("model") or "clip")
    missing = missing_interrogation_weights(model, models_dir)
    if missing:
        raise ModelNotFound(
            f"interrogate model {model!r} needs {', '.join(missing)} in {models_dir}, which is not there; "
            "this worker never downloads weights while a job waits: put the file(s) on the volume",
            details={"missing": missing},
        )
    if model == "clip":
        _check_clip_file(models_dir)


def resolve_upscalers(
    request: ImageToolRequest, engine: A1111Client, provider: ModelProvider | None, *, embedded: bool
) -> ImageToolRequest:
    """The request with each upscaler spelled as the engine lists it (``worker.preflight.upscalers``)."""
    body = dict(request.body)
    for field in _UPSCALER_FIELDS:
        name = body.get(field)
        if name is None:
            continue
        catalog = engine.catalog()
        if match_name(str(name), catalog.image_upscalers) is None:
            catalog = engine.catalog(refresh=True)
        body[field] = resolve_upscaler(field, str(name), catalog, provider, embedded=embedded)
    return replace(request, body=body)


def _call_tool(request: ImageToolRequest, engine: A1111Client, timeout_s: float) -> dict[str, Any]:
    """The engine's answer; a route it lacks (FastAPI's bare 404) is said so, not as a bad request."""
    try:
        return engine.call_image_tool(request.endpoint, request.body, timeout_s=timeout_s)
    except InputInvalid as exc:
        if exc.details.get("status") != 404 or exc.details.get("detail") != "Not Found":
            raise
        hint = _MISSING_ROUTE_HINTS.get(request.endpoint, "this engine does not have it")
        raise InputInvalid(
            f"the engine has no /sdapi/v1/{request.endpoint} route (HTTP 404): {hint}", details=exc.details
        ) from None


def run_tool(request: ImageToolRequest, engine: A1111Client, *, timeout_s: float) -> dict[str, Any]:
    """Call the engine and shape its answer: images as ``images`` (like a generation), facts as they are."""
    response = _call_tool(request, engine, timeout_s)
    if request.endpoint == "interrogate" and response.get("caption") == "<error>":
        # A1111 catches the interrogator's exception, logs it and answers 200 with this caption
        raise EngineFailed(
            "the engine could not interrogate the image (it answered the caption '<error>'); its log says why"
        )
    if request.endpoint == "extra-single-image":
        images = [str(response["image"])] if response.get("image") else []
    elif request.endpoint == "extra-batch-images":
        images = [str(image) for image in response.get("images") or []]
    else:
        return response
    wanted = len(request.body.get("imageList") or [None])
    if len(images) != wanted:
        raise EngineFailed(f"the engine returned {len(images)} images for {wanted} input images")
    warnings: list[str] = []
    return {
        "images": convert_images(images, request.output, warnings),
        "info": response.get("html_info", ""),
        "warnings": warnings,
    }
