"""The worker's HTTP client of an A1111-compatible engine: the calls a job makes, over ``Transport``.

A txt2img that outlives its deadline interrupts the engine and raises ``JobTimeout``; listings go through one
allowlist (``worker.a1111.endpoints``); the engine's lists are cached (``CatalogCache``) until a rescan or a
settings change. Messages and logs never carry base64 payloads or credentials.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from worker.a1111.catalog import CatalogCache, EngineCatalog
from worker.a1111.endpoints import (
    IMAGE_TOOL_ENDPOINTS,
    LISTING_ENDPOINTS,
    REFRESH_KINDS,
    RefreshKind,
    endpoint_name,
    listing_method,
)
from worker.a1111.extensions import ExtensionCatalog, ExtensionCatalogCache
from worker.a1111.process import EngineProcess
from worker.a1111.progress import GenerationProgress, parse_progress
from worker.a1111.readiness import Readiness
from worker.a1111.responses import summarise_body
from worker.a1111.transport import Transport, transport_reason
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineFailed, InputInvalid, JobTimeout

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

INTERRUPT_TIMEOUT_S = 5.0
_PROGRESS_QUERY = {"skip_current_image": "true"}  # spares A1111 base64-encoding a preview


class A1111Client:
    """Talks to one A1111 (or A1111-compatible) server.

    Args:
        base_url (`str`): the server root, with or without a trailing ``/``.
        connect_timeout_s (`float`, *optional*, defaults to 5): connect timeout of every request.
        request_timeout_s (`float`, *optional*, defaults to 30): read timeout of metadata requests.
        auth (`tuple[str, str]`, *optional*): HTTP Basic credentials (A1111 ``--api-auth``).
        pid_file (`Path`, *optional*): the engine's pid file; lets a dead engine be noticed at once.
        session (`requests.Session`, *optional*): an injected session (not closed by ``close()``).
        clock (`Clock`, *optional*): time for readiness polling and retry backoff.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 30.0,
        auth: tuple[str, str] | None = None,
        pid_file: Path | None = None,
        session: requests.Session | None = None,
        clock: Clock = SYSTEM_CLOCK,
        engine_name: str = "A1111",
    ) -> None:
        self.process = EngineProcess(pid_file)
        self._transport = Transport(
            base_url,
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            auth=auth,
            process=self.process,
            session=session,
            clock=clock,
            engine_name=engine_name,
        )
        self._catalog = CatalogCache(self._transport.get, clock=clock)
        self._extensions = ExtensionCatalogCache(self._transport.get)
        self._readiness = Readiness(self._transport, self.process, self.txt2img, clock=clock)
        self._clock = clock
        #: interrupts sent through this client: a job that saw one sent during it asks /progress what it hit
        self.interrupts_sent = 0

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> A1111Client:
        """Build the client from the validated settings (``a1111_auth`` is ``user:password``)."""
        auth: tuple[str, str] | None = None
        if settings.a1111_auth is not None:
            user, _, password = settings.a1111_auth.get_secret_value().partition(":")
            auth = (user, password)
        return cls(
            str(settings.a1111_url),
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            auth=auth,
            pid_file=settings.engine_pid_file,
            engine_name=settings.engine_name,
        )

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> A1111Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def is_engine_alive(self) -> bool:
        """Whether the engine process still runs; always True when no pid file is configured."""
        return self.process.is_alive()

    def wait_until_ready(self, timeout_s: float, *, warmup: bool = True) -> float:
        """Block until A1111 answers and (with ``warmup``) has loaded its default checkpoint; seconds taken.

        See ``worker.a1111.readiness.Readiness.wait``.
        """
        return self._readiness.wait(timeout_s, warmup=warmup)

    # -- generation --------------------------------------------------------------------------------

    def txt2img(self, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """POST ``/txt2img`` and return A1111's raw response (``images``, ``parameters``, ``info``).

        Retried only if the request never reached the engine. On a read timeout the running job is
        interrupted (so the engine is free for the next one) and ``JobTimeout`` is raised.
        """
        return self._generate("txt2img", payload, timeout_s)

    def img2img(self, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """POST ``/img2img``, as ``txt2img`` does."""
        return self._generate("img2img", payload, timeout_s)

    def call_image_tool(self, endpoint: str, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """POST an extras, png-info or interrogate body (``worker.a1111.endpoints.IMAGE_TOOL_ENDPOINTS``)."""
        if endpoint not in IMAGE_TOOL_ENDPOINTS:
            raise InputInvalid(
                f"endpoint {endpoint!r} is not an image endpoint: {', '.join(IMAGE_TOOL_ENDPOINTS)}"
            )
        return self._generate(endpoint, body, timeout_s)

    def _generate(self, endpoint: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        what = self._transport.what("POST", endpoint)
        started = self._clock.monotonic()
        try:
            response = self._transport.send(
                "POST", endpoint, read_timeout_s=timeout_s, body=payload, idempotent=False
            )
        except requests.ReadTimeout:
            interrupted = self.interrupt()
            raise JobTimeout(
                f"{self._transport.engine_name} did not finish {endpoint} within {timeout_s:g} s"
                + ("; the job was interrupted" if interrupted else "; interrupting it failed"),
                details={"timeout_s": timeout_s, "interrupted": interrupted},
            ) from None
        result = self._transport.decode("POST", endpoint, response)
        log.info("%s -> %d in %.2f s", what, response.status_code, self._clock.monotonic() - started)
        if not isinstance(result, dict):
            raise EngineFailed(
                f"{self._transport.engine_name} answered {what} with a {type(result).__name__}, not an object"
            )
        return result

    def progress(self) -> GenerationProgress:
        """The engine's progress (``/progress`` is outside A1111's generation lock: callable meanwhile)."""
        return parse_progress(self._transport.get("progress", params=_PROGRESS_QUERY))

    def interrupt(self) -> bool:
        """Ask A1111 to stop the running job; best effort, never raises."""
        self.interrupts_sent += 1
        what = self._transport.what("POST", "interrupt")
        timeout = (min(self._transport.connect_timeout_s, INTERRUPT_TIMEOUT_S), INTERRUPT_TIMEOUT_S)
        try:
            response = self._transport.request_once("POST", "interrupt", timeout=timeout)
        except requests.RequestException as exc:
            log.warning("%s failed: %s", what, transport_reason(exc))
            return False
        if not 200 <= response.status_code < 300:
            log.warning("%s failed: HTTP %d %s", what, response.status_code, summarise_body(response.text))
            return False
        log.info("%s sent", what)
        return True

    def set_options(self, options: dict[str, Any], *, timeout_s: float) -> None:
        """POST ``/options`` (e.g. ``sd_model_checkpoint``, which blocks until the model is loaded)."""
        try:
            response = self._transport.send(
                "POST", "options", read_timeout_s=timeout_s, body=options, idempotent=False
            )
        except requests.ReadTimeout:
            raise JobTimeout(
                f"{self._transport.engine_name} did not apply options {sorted(options)} "
                f"within {timeout_s:g} s",
                details={"timeout_s": timeout_s},
            ) from None
        finally:
            self._catalog.invalidate()
        self._transport.decode("POST", "options", response)

    # -- the engine's lists ------------------------------------------------------------------------

    def catalog(self, *, refresh: bool = False) -> EngineCatalog:
        """Everything a job may name, fetched once and cached (``refresh=True`` or ``refresh()`` refetch)."""
        return self._catalog.get(refresh=refresh)

    def extensions(self, *, refresh: bool = False) -> ExtensionCatalog:
        """The scripts and extension models a job's ``alwayson_scripts`` may name (fetched once, cached)."""
        return self._extensions.get(refresh=refresh)

    def refresh(self, kind: RefreshKind) -> None:
        """Rescan one model folder (``POST /refresh-<kind>``), then drop the cached catalog."""
        if kind not in REFRESH_KINDS:
            raise InputInvalid(f"unknown refresh kind {kind!r}; expected one of {', '.join(REFRESH_KINDS)}")
        self._call(f"refresh-{kind}")

    def call_listing(self, endpoint: str) -> Any:
        """Pass-through of an allowlisted read-only endpoint (GET) or refresh endpoint (POST)."""
        name = endpoint_name(endpoint)
        if name not in LISTING_ENDPOINTS:
            shown = endpoint if len(endpoint) <= 80 else endpoint[:77] + "..."
            raise InputInvalid(
                f"endpoint {shown!r} is not allowed; allowed: {', '.join(LISTING_ENDPOINTS)}",
                details={"endpoint": shown, "allowed": list(LISTING_ENDPOINTS)},
            )
        return self._call(name)

    def _call(self, name: str) -> Any:
        if listing_method(name) == "GET":
            return self._transport.get(name, _PROGRESS_QUERY if name == "progress" else None)
        what = self._transport.what("POST", name)
        try:
            # Idempotent rescans: safe to retry like a GET.
            response = self._transport.send(
                "POST", name, read_timeout_s=self._transport.request_timeout_s, idempotent=True
            )
        except requests.ReadTimeout:
            raise self._transport.wedged(what, self._transport.request_timeout_s) from None
        finally:
            self._catalog.invalidate()
        return self._transport.decode("POST", name, response)
