"""``/sdapi/v1`` routes with A1111 v1.10's paths, methods and response shapes.

Handlers are plain ``def`` so they run in the threadpool: a generation holding the FIFO lock never blocks
``/progress`` or ``/interrupt``.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

import psutil
from fastapi import APIRouter, Depends, Request
from PIL import Image

from . import infotext
from .engine import Engine
from .errors import RequestRefused
from .hires import LATENT_UPSCALE_MODES, upscalers_listing
from .samplers import samplers_listing, schedulers_listing
from .schemas import (
    ExtrasBatchRequest,
    ExtrasSingleRequest,
    Img2ImgRequest,
    PngInfoRequest,
    Txt2ImgRequest,
)


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


router = APIRouter(prefix="/sdapi/v1")
EngineDep = Depends(get_engine)


@router.post("/txt2img")
def txt2img(req: Txt2ImgRequest, engine: Engine = EngineDep) -> dict[str, Any]:
    return engine.txt2img(req)


@router.post("/img2img")
def img2img(req: Img2ImgRequest, engine: Engine = EngineDep) -> dict[str, Any]:
    return engine.img2img(req)


@router.post("/extra-single-image")
def extra_single_image(req: ExtrasSingleRequest, engine: Engine = EngineDep) -> dict[str, Any]:
    images, html_info = engine.extras(req, [("image", req.image)])
    return {"html_info": html_info, "image": images[0]}


@router.post("/extra-batch-images")
def extra_batch_images(req: ExtrasBatchRequest, engine: Engine = EngineDep) -> dict[str, Any]:
    files = [(f"imageList[{i}]", item.data) for i, item in enumerate(req.imageList)]
    images, html_info = engine.extras(req, files)
    return {"html_info": html_info, "images": images}


@router.get("/progress")
def progress(skip_current_image: bool = False, engine: Engine = EngineDep) -> dict[str, Any]:
    return engine.state.progress()


@router.post("/interrupt")
def interrupt(engine: Engine = EngineDep) -> dict[str, Any]:
    engine.state.interrupt()
    return {}


@router.post("/skip")
def skip(engine: Engine = EngineDep) -> None:
    engine.state.skip()


@router.get("/options")
def get_options(engine: Engine = EngineDep) -> dict[str, Any]:
    return engine.get_options()


@router.post("/options")
def set_options(values: dict[str, Any], engine: Engine = EngineDep) -> None:
    engine.set_options(values)


@router.get("/cmd-flags")
def cmd_flags(engine: Engine = EngineDep) -> dict[str, Any]:
    c = engine.config
    return {
        "models_dir": str(c.models_dir),
        "ckpt_dir": str(c.checkpoints),
        "lora_dir": str(c.loras),
        "embeddings_dir": str(c.embeddings),
        "vae_dir": str(c.vaes),
        "ckpt": c.ckpt,
        "clip_tokenizer": str(c.clip_tokenizer) if c.clip_tokenizer else None,
        "listen": c.host not in ("127.0.0.1", "localhost"),
        "port": c.port,
        "nowebui": True,
        "api": True,
        "use_cpu": ["all"] if engine.runtime.device == "cpu" else [],
        "no_half": str(engine.runtime.dtype) == "torch.float32",
        "medvram": engine.runtime.cpu_offload,
    }


@router.get("/sd-models")
def sd_models(engine: Engine = EngineDep) -> list[dict[str, Any]]:
    return [info.listing() for info in engine.inventory.checkpoints]


@router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    return samplers_listing()


@router.get("/schedulers")
def schedulers() -> list[dict[str, Any]]:
    return schedulers_listing()


@router.get("/loras")
def loras(engine: Engine = EngineDep) -> list[dict[str, Any]]:
    unique = {info.filename: info for info in engine.inventory.loras.values()}
    return [info.listing() for info in unique.values()]


@router.get("/embeddings")
def embeddings(engine: Engine = EngineDep) -> dict[str, Any]:
    return engine.inventory.embeddings_listing(engine.model.text_widths if engine.model else None)


@router.get("/sd-vae")
def sd_vae(engine: Engine = EngineDep) -> list[dict[str, Any]]:
    return [{"model_name": name, "filename": str(path)} for name, path in engine.inventory.vaes.items()]


@router.get("/unusable-models")
def unusable_models(engine: Engine = EngineDep) -> list[dict[str, str]]:
    """Not an A1111 route: the model files this engine skipped at its last refresh, with the reason."""
    return engine.inventory.unusable_listing()


@router.get("/upscalers")
def upscalers() -> list[dict[str, Any]]:
    return upscalers_listing()


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list[dict[str, Any]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


@router.get("/hypernetworks")
def hypernetworks() -> list[dict[str, Any]]:
    return []


@router.get("/face-restorers")
def face_restorers() -> list[dict[str, Any]]:
    return []


@router.get("/realesrgan-models")
def realesrgan_models() -> list[dict[str, Any]]:
    return []


@router.get("/prompt-styles")
def prompt_styles() -> list[dict[str, Any]]:
    return []


@router.get("/scripts")
def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


@router.get("/memory")
def memory() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    ram = {"free": vm.available, "used": psutil.Process(os.getpid()).memory_info().rss, "total": vm.total}
    import torch  # the first model load imports it; the server starts answering before that

    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "CUDA is not available (CPU engine)"}}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    cuda = {
        "system": {"free": free, "used": total - free, "total": total},
        "active": {
            "current": stats.get("active_bytes.all.current", 0),
            "peak": stats.get("active_bytes.all.peak", 0),
        },
        "allocated": {
            "current": stats.get("allocated_bytes.all.current", 0),
            "peak": stats.get("allocated_bytes.all.peak", 0),
        },
        "reserved": {
            "current": stats.get("reserved_bytes.all.current", 0),
            "peak": stats.get("reserved_bytes.all.peak", 0),
        },
        "inactive": {
            "current": stats.get("inactive_split_bytes.all.current", 0),
            "peak": stats.get("inactive_split_bytes.all.peak", 0),
        },
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
    return {"ram": ram, "cuda": cuda}


@router.post("/refresh-checkpoints")
def refresh_checkpoints(engine: Engine = EngineDep) -> None:
    with engine.lock.hold():
        engine.inventory.refresh_checkpoints()


@router.post("/refresh-loras")
def refresh_loras(engine: Engine = EngineDep) -> None:
    engine.inventory.refresh_loras()


@router.post("/refresh-embeddings")
def refresh_embeddings(engine: Engine = EngineDep) -> None:
    with engine.lock.hold():
        engine.inventory.refresh_embeddings()


@router.post("/refresh-vae")
def refresh_vae(engine: Engine = EngineDep) -> None:
    with engine.lock.hold():
        engine.inventory.refresh_vae()


@router.post("/png-info")
def png_info(req: PngInfoRequest) -> dict[str, Any]:
    data = req.image.split(",", 1)[1] if req.image.startswith("data:") else req.image
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    except (binascii.Error, ValueError, OSError) as exc:
        raise RequestRefused(400, "Invalid encoded image") from exc
    items = {k: v for k, v in image.info.items() if isinstance(v, str)}
    text = items.pop("parameters", "")
    return {"info": text, "items": items, "parameters": infotext.parse(text) if text else {}}
