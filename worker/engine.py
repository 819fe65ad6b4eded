"""HTTP client of the A1111 ``/sdapi/v1`` API: the only module that knows the engine's URLs.

Every request carries a ``(connect, read)`` timeout; every failure becomes one of the typed errors of
``worker.errors``:

* 422 and other 4xx → ``InputInvalid`` (a user mistake: the worker is kept);
* 500 mentioning out-of-memory → ``OutOfMemory``;
* refused/reset connections, a response dropped midway, a dead engine process → ``EngineUnavailable``;
* a txt2img that outlives its deadline → ``interrupt()`` then ``JobTimeout``;
* anything else (other 5xx, 3xx, invalid JSON) → ``EngineFailed`` with the status and a truncated body.

Retries are explicit and bounded (tenacity): GETs and the idempotent refresh POSTs on connection errors and
502/503/504; txt2img and options POSTs only when the request never reached the engine: the connection was
never made, or a kept-alive connection the engine had already closed was reused (the engine closes idle or
post-error connections; the request then dies without a single response byte). That case is retried once, on a
fresh connection, so a healthy engine is never reported dead, and a generation is never run twice. Between
attempts the engine process is checked, and a dead engine ends the call at once.

Messages and logs never carry base64 payloads or credentials.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_exponential
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from worker.errors import (
    EngineFailed,
    EngineUnavailable,
    InputInvalid,
    JobTimeout,
    ModelNotFound,
    OutOfMemory,
    WorkerError,
)

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

API_PREFIX = "/sdapi/v1/"

RefreshKind = Literal["checkpoints", "loras", "embeddings", "vae"]

#: Endpoints ``call_listing`` may reach: read-only listings plus the refresh POSTs. ``cmd-flags`` is left
#: out on purpose: it returns ``--api-auth`` and other secrets in clear.
READONLY_ENDPOINTS: frozenset[str] = frozenset(
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
        "refresh-checkpoints",
        "refresh-loras",
        "refresh-embeddings",
        "refresh-vae",
    }
)

#: The tiny generation that makes A1111 finish loading its default checkpoint (it blocks until then).
WARMUP_PAYLOAD: dict[str, Any] = {
    "prompt": "warm-up",
    "steps": 1,
    "width": 64,
    "height": 64,
    "batch_size": 1,
    "n_iter": 1,
    "send_images": False,
    "save_images": False,
}

_RETRY_ATTEMPTS = 3
_RETRY_BACKOFF_S = 0.2
_RETRY_STATUSES = frozenset({502, 503, 504})
_READY_POLL_S = 0.5
_INTERRUPT_TIMEOUT_S = 5.0
_BODY_LIMIT = 300
_OOM_MARKERS = ("outofmemoryerror", "cuda out of memory", "out of memory")
# A run of 200+ base64 characters is an image, never something a message needs.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{200,}")


# --------------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Progress:
    """``/progress`` reduced to what a job reports; ``active`` is True while A1111 runs a job."""

    progress: float
    eta_relative: float
    step: int
    total: int
    active: bool
    interrupted: bool = False  # the last job's interrupted/skipped flag, kept until the next job starts


class _StaleConnection(requests.ConnectionError):
    """A reused keep-alive connection died before any response byte: the request never reached the engine."""


class _RetryableStatus(Exception):
    """A 502/503/504 on a safe request: raised only so tenacity retries it."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


# --------------------------------------------------------------------------------------------------
# Pure helpers (no I/O)
# --------------------------------------------------------------------------------------------------


def _redact(text: str) -> str:
    return _BASE64_RUN.sub(lambda m: f"<{len(m.group(0))} chars of base64>", text)


def _truncate(text: str, limit: int = _BODY_LIMIT) -> str:
    text = " ".join(_redact(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summarise_body(body: str) -> str:
    """A1111's error body as one short line: ``<Class>: <errors>``, FastAPI details, or the raw text."""
    try:
        data = json.loads(body)
    except ValueError:
        return _truncate(body) or "(empty body)"
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, list):  # FastAPI validation: [{"loc": [...], "msg": ...}, ...]
            parts = []
            for item in detail:
                if not isinstance(item, dict):
                    parts.append(str(item))
                    continue
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query")]
                msg = str(item.get("msg", "invalid"))
                parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
            return _truncate("; ".join(parts))
        cls, errors = data.get("error"), data.get("errors")
        if cls and errors:
            return _truncate(f"{cls}: {errors}")
        if detail:
            return _truncate(f"{detail}")
        if cls:
            return _truncate(str(cls))
    return _truncate(body)


_MODEL_WORDS = ("checkpoint", "lora", "vae", "embedding")
_MISSING_PATH = re.compile(r"No such file or directory: '([^']*)'")


def _vanished_model(method: str, status: int, body: str, summary: str) -> str | None:
    """A model file removed between pre-flight and generation, as a message without the engine's paths.

    The embedded engine answers 404 naming the model; A1111 fails with a 500 ``FileNotFoundError``
    carrying the absolute path, of which only the file name is kept.
    """
    if method == "POST" and status == 404 and any(word in summary.lower() for word in _MODEL_WORDS):
        return f"a model the engine listed is gone: {summary}"
    if status >= 500 and "FileNotFoundError" in body:
        found = _MISSING_PATH.search(body)
        name = found.group(1).replace("\\", "/").rsplit("/", 1)[-1] if found else "a model file"
        return f"the engine could not open {name!r}: it was removed from the volume"
    return None


def _is_oom(body: str) -> bool:
    lowered = body.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def _never_connected(exc: BaseException) -> bool:
    """True when the request was refused before any byte was sent (safe to retry even a POST)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (NewConnectionError, ConnectTimeoutError)):
            return True
        reason = getattr(cause, "reason", None)
        if isinstance(reason, BaseException):
            cause = reason
        elif cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        else:
            cause = cause.__cause__ or cause.__context__
    return False


def _transport_reason(exc: BaseException) -> str:
    """A short cause for a transport failure, without URLs' credentials or object reprs."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if _never_connected(exc):
        return "connection refused"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection dropped mid-response"
    text = str(exc)
    for marker, reason in (
        ("RemoteDisconnected", "connection closed without a response"),
        ("Connection reset", "connection reset"),
        ("Connection aborted", "connection aborted"),
        ("IncompleteRead", "connection dropped mid-response"),
    ):
        if marker in text:
            return reason
    return type(exc).__name__


def _public_url(url: str) -> str:
    """``url`` without user:password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _default_scheduler(options: Any) -> str | None:
    value = options.get("scheduler") if isinstance(options, dict) else None
    return str(value) if value else None


def _str_tuple(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list):
        return ()
    return tuple(str(v) for v in values if v is not None)


# --------------------------------------------------------------------------------------------------
# Keep-alive tracking: was the request sent on a reused connection?
# --------------------------------------------------------------------------------------------------

_sent = threading.local()


class _TrackedConnectionMixin:
    """Records, per thread, whether the last request went out on a socket that had already served one."""

    sock: Any
    _served_on_socket = 0

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._served_on_socket = 0

    def request(self, *args: Any, **kwargs: Any) -> None:
        _sent.reused = self.sock is not None and self._served_on_socket > 0
        super().request(*args, **kwargs)  # type: ignore[misc]
        self._served_on_socket += 1


class _TrackedHTTPConnection(_TrackedConnectionMixin, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedConnectionMixin, HTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _TrackedAdapter(HTTPAdapter):
    """requests' adapter with connections that know whether they were reused (see ``_StaleConnection``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


def _no_response(exc: BaseException) -> bool:
    """True when the connection was closed or reset before the response's status line arrived."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(
            cause,
            (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError),
        ):
            return True
        if cause.args and isinstance(cause.args[-1], BaseException):
            cause = cause.args[-1]
        else:
            cause = cause.__cause__ or cause.__context__
    return False


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------


class A1111Client:
    """Talks to one A1111 (or A1111-compatible) server.

    Args:
        base_url (`str`): the server root, with or without a trailing ``/``.
        connect_timeout_s (`float`, *optional*, defaults to 5): connect timeout of every request.
        request_timeout_s (`float`, *optional*, defaults to 30): read timeout of metadata requests.
        auth (`tuple[str, str]`, *optional*): HTTP Basic credentials (A1111 ``--api-auth``).
        pid_file (`Path`, *optional*): the engine's pid file; lets a dead engine be noticed at once.
        session (`requests.Session`, *optional*): an injected session (not closed by ``close()``).
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
    ) -> None:
        self._base = str(base_url).rstrip("/")
        self._public_base = _public_url(self._base)
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._auth = requests.auth.HTTPBasicAuth(*auth) if auth else None
        self._pid_file = pid_file
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # The engine is local: a proxy from the environment must never sit in between.
            session.trust_env = False
            session.mount("http://", _TrackedAdapter())
            session.mount("https://", _TrackedAdapter())
        self._session = session
        self._catalog: EngineCatalog | None = None
        self._catalog_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> A1111Client:
        """Build the client from the validated settings (``a1111_auth`` is ``user:password``)."""
        auth: tuple[str, str] | None = None
        if settings.a1111_auth is not None:
            user, sep, password = settings.a1111_auth.get_secret_value().partition(":")
            if not sep or not user:
                raise ValueError("WORKER_A1111_AUTH must have the form user:password")
            auth = (user, password)
        return cls(
            str(settings.a1111_url),
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            auth=auth,
            pid_file=settings.engine_pid_file,
        )

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def _drop_idle_connections(self) -> None:
        """Close every pooled connection (the session stays usable and opens fresh ones)."""
        for adapter in self._session.adapters.values():
            adapter.close()

    def __enter__(self) -> A1111Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- engine process ----------------------------------------------------------------------------

    def _read_pid(self) -> int | None:
        if self._pid_file is None:
            return None
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_engine_alive(self) -> bool:
        """Whether the engine process still runs; always True when no pid file is configured."""
        if self._pid_file is None:
            return True
        pid = self._read_pid()
        if pid is None or pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True  # no /proc (not Linux) or it vanished between the two calls: trust kill()
        state = stat.rpartition(")")[2].split()[:1]
        return state not in (["Z"], ["X"])

    def _dead_engine_error(self) -> EngineUnavailable:
        pid = self._read_pid()
        who = f"pid {pid}" if pid is not None else f"no valid pid in {self._pid_file}"
        return EngineUnavailable(
            f"the engine process exited ({who}); the worker must be restarted",
            details={"pid": pid, "pid_file": str(self._pid_file)},
        )

    # -- transport ---------------------------------------------------------------------------------

    def _url(self, endpoint: str) -> str:
        return self._base + API_PREFIX + endpoint

    def _what(self, method: str, endpoint: str) -> str:
        return f"{method} {API_PREFIX}{endpoint}"

    def _send_once(
        self,
        method: str,
        endpoint: str,
        read_timeout_s: float,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        retry_statuses: bool,
    ) -> requests.Response:
        _sent.reused = False
        try:
            response = self._session.request(
                method,
                self._url(endpoint),
                params=params,
                json=body,
                auth=self._auth,
                timeout=(self._connect_timeout_s, read_timeout_s),
                allow_redirects=False,
            )
        except requests.ConnectionError as exc:
            if getattr(_sent, "reused", False) and _no_response(exc):
                # Every idle connection may be as stale as this one: the retry must open a fresh one.
                self._drop_idle_connections()
                raise _StaleConnection(*exc.args, request=exc.request) from exc
            raise
        if retry_statuses and response.status_code in _RETRY_STATUSES:
            raise _RetryableStatus(response)
        return response

    def _send(
        self,
        method: str,
        endpoint: str,
        *,
        read_timeout_s: float,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool,
        attempts: int = _RETRY_ATTEMPTS,
    ) -> requests.Response:
        """One request with the retry policy; transport failures come back as typed errors.

        ``idempotent`` requests are retried on any connection error and on 502/503/504; the others only
        when the request never reached the engine (connection never made, or a stale kept-alive
        connection: once, on a fresh one). Read timeouts are never retried; they propagate as
        ``requests.ReadTimeout`` so the caller decides (txt2img interrupts).
        """
        what = self._what(method, endpoint)
        backoff = wait_exponential(multiplier=_RETRY_BACKOFF_S, max=2.0)

        def should_retry(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if exc is None:
                return False
            if idempotent:
                transient = isinstance(exc, (_RetryableStatus, requests.ConnectionError))
            elif isinstance(exc, _StaleConnection):
                transient = state.attempt_number == 1
            else:
                transient = _never_connected(exc)
            return transient and self.is_engine_alive()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return 0.0 if isinstance(exc, _StaleConnection) else float(backoff(state))

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _StaleConnection):
                reason = "a kept-alive connection the engine had closed; retrying on a fresh one"
            elif isinstance(exc, _RetryableStatus):
                reason = str(exc)
            else:
                reason = _transport_reason(exc or Exception())
            log.warning("%s failed (%s); retry %d of %d", what, reason, state.attempt_number, attempts - 1)

        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait,
            retry=should_retry,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            response: requests.Response = retrying(
                self._send_once, method, endpoint, read_timeout_s, params, body, idempotent
            )
        except _RetryableStatus as exc:
            if not self.is_engine_alive():
                raise self._dead_engine_error() from None
            return exc.response
        except requests.ReadTimeout:
            raise
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            if not self.is_engine_alive():
                raise self._dead_engine_error() from exc
            reason = _transport_reason(exc)
            raise EngineUnavailable(
                f"A1111 at {self._public_base} failed on {what}: {reason}",
                details={"endpoint": endpoint, "reason": reason},
            ) from exc
        except requests.RequestException as exc:
            raise EngineFailed(
                f"A1111 request {what} failed: {_transport_reason(exc)}", details={"endpoint": endpoint}
            ) from exc
        return response

    def _decode(self, method: str, endpoint: str, response: requests.Response) -> Any:
        """The JSON body of a 2xx answer, or the typed error for anything else."""
        what = self._what(method, endpoint)
        status = response.status_code
        details: dict[str, Any] = {"endpoint": endpoint, "status": status}
        if 200 <= status < 300:
            try:
                return response.json()
            except ValueError:
                raise EngineFailed(
                    f"A1111 answered {what} with HTTP {status} but the body is not JSON: "
                    f"{_truncate(response.text)}",
                    details=details,
                ) from None
        text = response.text
        summary = _summarise_body(text)
        details["detail"] = summary
        if status in (401, 403):
            # Not the user's fault: the worker's credentials (WORKER_A1111_AUTH) do not match --api-auth.
            raise EngineFailed(
                f"A1111 refused {what} with HTTP {status} ({summary}); check WORKER_A1111_AUTH",
                details=details,
            )
        if status == 422:
            raise InputInvalid(f"A1111 rejected the request: {summary}", details=details)
        gone = _vanished_model(method, status, text, summary)
        if gone is not None:
            raise ModelNotFound(f"{gone} (on {what}); the job can be retried", details=details)
        if 400 <= status < 500:
            raise InputInvalid(f"A1111 rejected {what} with HTTP {status}: {summary}", details=details)
        if status >= 500 and _is_oom(text):
            raise OutOfMemory(f"A1111 ran out of GPU memory on {what}: {summary}", details=details)
        raise EngineFailed(f"A1111 answered {what} with HTTP {status}: {summary}", details=details)

    def _get(self, endpoint: str, params: dict[str, str] | None = None) -> Any:
        """GET with retries; a read timeout on a cheap listing means the engine is wedged."""
        try:
            response = self._send(
                "GET", endpoint, read_timeout_s=self._request_timeout_s, params=params, idempotent=True
            )
        except requests.ReadTimeout:
            raise self._wedged(self._what("GET", endpoint), self._request_timeout_s) from None
        return self._decode("GET", endpoint, response)

    def _wedged(self, what: str, timeout_s: float) -> EngineUnavailable:
        return EngineUnavailable(f"A1111 did not answer {what} within {timeout_s:g} s; the engine is wedged")

    # -- readiness ---------------------------------------------------------------------------------

    def wait_until_ready(self, timeout_s: float, *, warmup: bool = True) -> float:
        """Block until A1111 answers and (with ``warmup``) has loaded its default checkpoint.

        A1111 has no readiness endpoint: it listens before the model is loaded. So: poll
        ``GET /sd-models`` until a 200, then run one tiny txt2img, which waits for the load.

        Returns:
            `float`: seconds taken.

        Raises:
            EngineUnavailable: at once if the engine process exits; at the deadline with the last error;
                when the warm-up generation fails (the default checkpoint did not load).
        """
        started = time.monotonic()
        deadline = started + timeout_s
        last_error = "no answer yet"
        what = self._what("GET", "sd-models")
        while True:
            if not self.is_engine_alive():
                raise self._dead_engine_error()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineUnavailable(
                    f"A1111 at {self._public_base} was not ready within the {timeout_s:.3g} s deadline; "
                    f"last error: {last_error}",
                    details={"deadline_s": timeout_s, "last_error": last_error},
                )
            try:
                response = self._session.get(
                    self._url("sd-models"),
                    auth=self._auth,
                    timeout=(
                        min(self._connect_timeout_s, remaining),
                        min(self._request_timeout_s, remaining),
                    ),
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                last_error = f"{what}: {_transport_reason(exc)}"
            else:
                if response.status_code == 200:
                    break
                last_error = f"{what}: HTTP {response.status_code} {_summarise_body(response.text)}"
                if response.status_code in (401, 403):
                    raise EngineUnavailable(
                        f"A1111 refused the worker's credentials ({last_error}); check WORKER_A1111_AUTH"
                    )
            time.sleep(max(0.0, min(_READY_POLL_S, deadline - time.monotonic())))
        listening = time.monotonic()
        log.info("A1111 answers %s after %.2f s", what, listening - started)

        if warmup:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineUnavailable(f"no time left for the warm-up within the {timeout_s:.3g} s deadline")
            try:
                self.txt2img(dict(WARMUP_PAYLOAD), timeout_s=remaining)
            except (EngineUnavailable, OutOfMemory):
                raise
            except JobTimeout:
                raise EngineUnavailable(
                    f"the warm-up txt2img did not finish within the {timeout_s:.3g} s readiness deadline "
                    "(default checkpoint still loading?)",
                    details={"deadline_s": timeout_s},
                ) from None
            except WorkerError as exc:
                detail = exc.details.get("detail", exc.message)
                raise EngineUnavailable(
                    f"default checkpoint failed to load: {detail}", details=exc.details
                ) from exc
            log.info("A1111 warm-up txt2img took %.2f s", time.monotonic() - listening)

        took = time.monotonic() - started
        log.info("A1111 ready in %.2f s", took)
        return took

    # -- generation --------------------------------------------------------------------------------

    def txt2img(self, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """POST ``/txt2img`` and return A1111's raw response (``images``, ``parameters``, ``info``).

        Retried only if the connection was never made. On a read timeout the running job is
        interrupted (so the engine is free for the next one) and ``JobTimeout`` is raised.
        """
        what = self._what("POST", "txt2img")
        started = time.monotonic()
        try:
            response = self._send("POST", "txt2img", read_timeout_s=timeout_s, body=payload, idempotent=False)
        except requests.ReadTimeout:
            interrupted = self.interrupt()
            raise JobTimeout(
                f"A1111 did not finish txt2img within {timeout_s:g} s"
                + ("; the job was interrupted" if interrupted else "; interrupting it failed"),
                details={"timeout_s": timeout_s, "interrupted": interrupted},
            ) from None
        result = self._decode("POST", "txt2img", response)
        log.info("%s -> %d in %.2f s", what, response.status_code, time.monotonic() - started)
        if not isinstance(result, dict):
            raise EngineFailed(f"A1111 answered {what} with a {type(result).__name__}, not an object")
        return result

    def progress(self) -> Progress:
        """The engine's progress; ``skip_current_image`` spares base64-encoding a preview."""
        data = self._get("progress", params={"skip_current_image": "true"})
        if not isinstance(data, dict):
            raise EngineFailed(f"A1111 /progress returned a {type(data).__name__}, not an object")
        state = data.get("state") or {}
        if not isinstance(state, dict):
            state = {}
        progress = float(data.get("progress") or 0.0)
        job_count = int(state.get("job_count") or 0)
        return Progress(
            progress=progress,
            eta_relative=float(data.get("eta_relative") or 0.0),
            step=int(state.get("sampling_step") or 0),
            total=int(state.get("sampling_steps") or 0),
            active=job_count != 0 or progress > 0,
            interrupted=bool(state.get("interrupted") or state.get("skipped")),
        )

    def interrupt(self) -> bool:
        """Ask A1111 to stop the running job; best effort, never raises."""
        what = self._what("POST", "interrupt")
        try:
            response = self._session.post(
                self._url("interrupt"),
                auth=self._auth,
                timeout=(min(self._connect_timeout_s, _INTERRUPT_TIMEOUT_S), _INTERRUPT_TIMEOUT_S),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            log.warning("%s failed: %s", what, _transport_reason(exc))
            return False
        if not 200 <= response.status_code < 300:
            log.warning("%s failed: HTTP %d %s", what, response.status_code, _summarise_body(response.text))
            return False
        log.info("%s sent", what)
        return True

    def set_options(self, options: dict[str, Any], *, timeout_s: float) -> None:
        """POST ``/options`` (e.g. ``sd_model_checkpoint``, which blocks until the model is loaded)."""
        try:
            response = self._send("POST", "options", read_timeout_s=timeout_s, body=options, idempotent=False)
        except requests.ReadTimeout:
            raise JobTimeout(
                f"A1111 did not apply options {sorted(options)} within {timeout_s:g} s",
                details={"timeout_s": timeout_s},
            ) from None
        finally:
            self._invalidate()
        self._decode("POST", "options", response)

    # -- catalogue and listings --------------------------------------------------------------------

    def _invalidate(self) -> None:
        with self._catalog_lock:
            self._catalog = None

    def catalog(self, *, refresh: bool = False) -> EngineCatalog:
        """Everything a job may name, fetched once and cached (``refresh=True`` or ``refresh()`` refetch)."""
        with self._catalog_lock:
            if self._catalog is not None and not refresh:
                return self._catalog
        started = time.monotonic()
        try:
            catalog = self._build_catalog()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineFailed(
                f"A1111 returned an unexpected listing shape: {type(exc).__name__}: {exc}"
            ) from exc
        with self._catalog_lock:
            self._catalog = catalog
        log.info(
            "A1111 catalog: %d checkpoints, %d samplers, %d schedulers, %d loras, %d embeddings in %.2f s",
            len(catalog.checkpoints),
            len(catalog.samplers),
            len(catalog.schedulers),
            len(catalog.loras),
            len(catalog.embeddings),
            time.monotonic() - started,
        )
        return catalog

    def _fetch_list(self, endpoint: str, *, optional: bool = False) -> list[dict[str, Any]]:
        """A listing that must be a JSON array of objects; ``optional`` ones may be absent (404)."""
        try:
            data = self._get(endpoint)
        except InputInvalid as exc:
            if optional and exc.details.get("status") == 404:
                log.warning("A1111 has no /%s endpoint; treating it as empty", endpoint)
                return []
            raise EngineFailed(
                f"A1111 failed to list {endpoint}: {exc.message}", details=exc.details
            ) from exc
        if not isinstance(data, list):
            raise EngineFailed(f"A1111 /{endpoint} returned a {type(data).__name__}, not a list")
        return [item for item in data if isinstance(item, dict)]

    def _build_catalog(self) -> EngineCatalog:
        checkpoints = tuple(
            CheckpointEntry(
                title=str(m["title"]),
                model_name=str(m.get("model_name") or ""),
                filename=str(m.get("filename") or ""),
                hash=m.get("hash"),
                sha256=m.get("sha256"),
            )
            for m in self._fetch_list("sd-models")
        )
        samplers = tuple(
            SamplerEntry(
                name=str(s["name"]),
                aliases=_str_tuple(s.get("aliases")),
                default_scheduler=_default_scheduler(s.get("options")),
            )
            for s in self._fetch_list("samplers")
        )
        # /schedulers exists since A1111 1.9.1; the Lora routes only with the built-in extension enabled.
        schedulers = tuple(
            SchedulerEntry(
                name=str(s["name"]),
                label=str(s.get("label") or s["name"]),
                aliases=_str_tuple(s.get("aliases")),
            )
            for s in self._fetch_list("schedulers", optional=True)
        )
        loras = tuple(
            LoraEntry(
                name=str(item["name"]),
                alias=str(item.get("alias") or item["name"]),
                path=str(item.get("path") or ""),
            )
            for item in self._fetch_list("loras", optional=True)
        )
        embeddings_data = self._get("embeddings")
        loaded = embeddings_data.get("loaded") if isinstance(embeddings_data, dict) else None
        embeddings = tuple(str(name) for name in loaded) if isinstance(loaded, dict) else ()
        vaes = tuple(str(v["model_name"]) for v in self._fetch_list("sd-vae"))
        upscalers = tuple(str(u["name"]) for u in self._fetch_list("upscalers")) + tuple(
            str(u["name"]) for u in self._fetch_list("latent-upscale-modes")
        )
        options = self._get("options")
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
        )

    def refresh(self, kind: RefreshKind) -> None:
        """Rescan one model folder (``POST /refresh-<kind>``), then drop the cached catalog."""
        if kind not in get_args(RefreshKind):
            raise InputInvalid(
                f"unknown refresh kind {kind!r}; expected one of {', '.join(get_args(RefreshKind))}"
            )
        self._call(f"refresh-{kind}")

    def call_listing(self, endpoint: str) -> Any:
        """Pass-through of an allowlisted read-only endpoint (GET) or refresh endpoint (POST)."""
        name = endpoint.strip().strip("/")
        if name.startswith(API_PREFIX.strip("/") + "/"):
            name = name[len(API_PREFIX.strip("/")) + 1 :]
        if name not in READONLY_ENDPOINTS:
            shown = endpoint if len(endpoint) <= 80 else endpoint[:77] + "..."
            raise InputInvalid(
                f"endpoint {shown!r} is not allowed; allowed: {', '.join(sorted(READONLY_ENDPOINTS))}",
                details={"endpoint": shown, "allowed": sorted(READONLY_ENDPOINTS)},
            )
        return self._call(name)

    def _call(self, name: str) -> Any:
        if name.startswith("refresh-"):
            what = self._what("POST", name)
            try:
                # Idempotent rescans: safe to retry like a GET.
                response = self._send("POST", name, read_timeout_s=self._request_timeout_s, idempotent=True)
            except requests.ReadTimeout:
                raise self._wedged(what, self._request_timeout_s) from None
            finally:
                self._invalidate()
            return self._decode("POST", name, response)
        return self._get(name, {"skip_current_image": "true"} if name == "progress" else None)


__all__ = [
    "API_PREFIX",
    "READONLY_ENDPOINTS",
    "WARMUP_PAYLOAD",
    "A1111Client",
    "CheckpointEntry",
    "EngineCatalog",
    "LoraEntry",
    "Progress",
    "RefreshKind",
    "SamplerEntry",
    "SchedulerEntry",
]
