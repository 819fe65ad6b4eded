"""The engine's own lists (checkpoints, samplers, schedulers, LoRAs, embeddings, VAEs, upscalers, options),
parsed into value types and kept until a rescan or a settings change, so every name a job uses is checked
against what the engine really has, without a round trip per job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineFailed, InputInvalid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointEntry:
    """One ``/sd-models`` item; ``title`` is what ``sd_model_checkpoint`` holds once loaded."""

    title: str
    model_name: str
    filename: str
    hash: str | None
    sha256: str | None


@dataclass(frozen=True)
class SamplerEntry:
    """``default_scheduler`` is the scheduler name A1111's ``Automatic`` means for this sampler, if any."""

    name: str
    aliases: tuple[str, ...]
    default_scheduler: str | None = None


@dataclass(frozen=True)
class SchedulerEntry:
    """``name`` (e.g. ``karras``) and ``label`` (``Karras``) are both accepted by A1111."""

    name: str
    label: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class LoraEntry:
    """``name`` is what ``<lora:name:w>`` matches; ``alias`` may differ (``lora_preferred_name``)."""

    name: str
    alias: str
    path: str


@dataclass(frozen=True)
class EngineCatalog:
    """What the running engine can use, so every name in a job is checked before generating."""

    checkpoints: tuple[CheckpointEntry, ...]
    samplers: tuple[SamplerEntry, ...]
    schedulers: tuple[SchedulerEntry, ...]
    loras: tuple[LoraEntry, ...]
    embeddings: tuple[str, ...]  # loaded embedding names
    vaes: tuple[str, ...]  # /sd-vae model_name values
    upscalers: tuple[str, ...]  # /upscalers names + /latent-upscale-modes names
    current_checkpoint: str | None  # GET /options sd_model_checkpoint
    #: lookup tables pre-flight derives from these lists, built once per fetched catalog (not compared)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)  # GET /options, whole
    #: /upscalers names alone: what extras accept (latent modes only upscale a hires pass's latents)
    image_upscalers: tuple[str, ...] = ()
    #: /upscalers name -> its ``model_path`` (a file, or the address A1111 would download it from)
    upscaler_paths: Mapping[str, str] = field(default_factory=dict)


def _default_scheduler(options: Any) -> str | None:
    value = options.get("scheduler") if isinstance(options, dict) else None
    return str(value) if value else None


def _str_tuple(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list):
        return ()
    return tuple(str(v) for v in values if v is not None)


def _objects(endpoint: str, data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise EngineFailed(f"A1111 /{endpoint} returned a {type(data).__name__}, not a list")
    return [item for item in data if isinstance(item, dict)]


def parse_catalog(read: Callable[[str], Any]) -> EngineCatalog:
    """Build the catalog from ``read(endpoint)``, which returns an endpoint's JSON (``None``: absent).

    Raises:
        EngineFailed: a listing has another shape than A1111's.
    """
    checkpoints = tuple(
        CheckpointEntry(
            title=str(m["title"]),
            model_name=str(m.get("model_name") or ""),
            filename=str(m.get("filename") or ""),
            hash=m.get("hash"),
            sha256=m.get("sha256"),
        )
        for m in _objects("sd-models", read("sd-models"))
    )
    samplers = tuple(
        SamplerEntry(
            name=str(s["name"]),
            aliases=_str_tuple(s.get("aliases")),
            default_scheduler=_default_scheduler(s.get("options")),
        )
        for s in _objects("samplers", read("samplers"))
    )
    # /schedulers exists since A1111 1.9.1; the Lora routes only with the built-in extension enabled.
    schedulers = tuple(
        SchedulerEntry(
            name=str(s["name"]), label=str(s.get("label") or s["name"]), aliases=_str_tuple(s.get("aliases"))
        )
        for s in _objects("schedulers", read("schedulers") or [])
    )
    loras = tuple(
        LoraEntry(
            name=str(item["name"]),
            alias=str(item.get("alias") or item["name"]),
            path=str(item.get("path") or ""),
        )
        for item in _objects("loras", read("loras") or [])
    )
    embeddings_data = read("embeddings")
    loaded = embeddings_data.get("loaded") if isinstance(embeddings_data, dict) else None
    embeddings = tuple(str(name) for name in loaded) if isinstance(loaded, dict) else ()
    vaes = tuple(str(v["model_name"]) for v in _objects("sd-vae", read("sd-vae")))
    upscaler_objects = _objects("upscalers", read("upscalers"))
    image_upscalers = tuple(str(u["name"]) for u in upscaler_objects)
    upscaler_paths = {str(u["name"]): str(u["model_path"]) for u in upscaler_objects if u.get("model_path")}
    upscalers = image_upscalers + tuple(
        str(u["name"]) for u in _objects("latent-upscale-modes", read("latent-upscale-modes"))
    )
    options = read("options")
    current = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
    return EngineCatalog(
        checkpoints=checkpoints,
        samplers=samplers,
        schedulers=schedulers,
        loras=loras,
        embeddings=embeddings,
        vaes=vaes,
        upscalers=upscalers,
        current_checkpoint=str(current) if current else None,
        options=dict(options) if isinstance(options, dict) else {},
        image_upscalers=image_upscalers,
        upscaler_paths=upscaler_paths,
    )


#: listings an engine may lack: /schedulers before A1111 1.9.1, the Lora routes without the built-in extension
OPTIONAL_LISTINGS = frozenset({"schedulers", "loras"})


class CatalogCache:
    """The engine's catalog, fetched once and kept until ``invalidate()`` (a rescan, a settings change).

    Args:
        get: GETs an endpoint's JSON (``Transport.get``); a 404 arrives as ``InputInvalid``.
    """

    def __init__(self, get: Callable[[str], Any], *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._get = get
        self._clock = clock
        self._catalog: EngineCatalog | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._catalog = None

    def get(self, *, refresh: bool = False) -> EngineCatalog:
        with self._lock:
            if self._catalog is not None and not refresh:
                return self._catalog
        started = self._clock.monotonic()
        try:
            catalog = parse_catalog(self._read)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineFailed(
                f"A1111 returned an unexpected listing shape: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            self._catalog = catalog
        log.info(
            "A1111 catalog: %d checkpoints, %d samplers, %d schedulers, %d loras, %d embeddings in %.2f s",
            len(catalog.checkpoints),
            len(catalog.samplers),
            len(catalog.schedulers),
            len(catalog.loras),
            len(catalog.embeddings),
            self._clock.monotonic() - started,
        )
        return catalog

    def _read(self, endpoint: str) -> Any:
        try:
            return self._get(endpoint)
        except InputInvalid as exc:
            if endpoint in OPTIONAL_LISTINGS and exc.details.get("status") == 404:
                log.warning("A1111 has no /%s endpoint; treating it as empty", endpoint)
                return None
            raise EngineFailed(
                f"A1111 failed to list {endpoint}: {exc.message}", details=exc.details
            ) from exc
