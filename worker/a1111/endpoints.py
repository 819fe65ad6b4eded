"""Which A1111 endpoints the worker serves through its envelope, defined once (pure: no I/O, no HTTP client).

The job schema (``worker.schema``) validates an envelope's ``api.endpoint`` against these; the HTTP client
(``worker.a1111.client``) refuses anything else too, so neither can drift from the other.
"""

from __future__ import annotations

from typing import Literal

API_PREFIX = "/sdapi/v1/"

RefreshKind = Literal["checkpoints", "loras", "embeddings", "vae"]
REFRESH_KINDS: tuple[RefreshKind, ...] = ("checkpoints", "loras", "embeddings", "vae")

#: Endpoints an envelope may reach besides generation: read-only listings (GET) and the rescans (POST).
#: ``cmd-flags`` is left out on purpose: it returns ``--api-auth`` and other secrets in clear; ``POST
#: options`` because a job never changes the engine for later jobs.
LISTING_ENDPOINTS: tuple[str, ...] = tuple(
    sorted(
        {
            "sd-models",
            "samplers",
            "schedulers",
            "loras",
            "embeddings",
            "sd-vae",
            "upscalers",
            "latent-upscale-modes",
            "hypernetworks",
            "face-restorers",
            "realesrgan-models",
            "prompt-styles",
            "scripts",
            "memory",
            "options",
            "progress",
            *(f"refresh-{kind}" for kind in REFRESH_KINDS),
        }
    )
)
GENERATION_ENDPOINTS: tuple[str, ...] = ("txt2img", "img2img")
#: Endpoints that take an image and return one (extras) or facts about it: a job's input images are checked
#: before they are sent (``worker.input_images``).
IMAGE_TOOL_ENDPOINTS: tuple[str, ...] = (
    "extra-single-image",
    "extra-batch-images",
    "png-info",
    "interrogate",
)


def endpoint_name(endpoint: str) -> str:
    """``/sdapi/v1/txt2img``, ``sdapi/v1/txt2img`` and ``txt2img`` all name ``txt2img``."""
    name = endpoint.strip().strip("/")
    prefix = API_PREFIX.strip("/") + "/"
    return name[len(prefix) :] if name.startswith(prefix) else name


def listing_method(endpoint: str) -> Literal["GET", "POST"]:
    """The method a listing endpoint takes: POST for a rescan, GET for everything else."""
    return "POST" if endpoint.startswith("refresh-") else "GET"
