"""HTTP to the engine: one session, a ``(connect, read)`` timeout on every request, bounded retries.

Retries (tenacity, sleeping through the injected ``Clock``): GETs and the idempotent refresh POSTs on
connection errors and 502/503/504; txt2img and options POSTs only when the request never reached the
engine: the connection was never made, or a kept-alive connection the engine had already closed was
reused (``worker.a1111.keepalive``). That case is retried once, at once, on a fresh connection, so a
healthy engine is never reported dead and a generation never runs twice. Between attempts the engine
process is checked, and a dead engine ends the call at once. Transport failures become
``EngineUnavailable``; read timeouts propagate as ``requests.ReadTimeout`` so the caller decides (txt2img
interrupts the engine).
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_exponential
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from worker.a1111.endpoints import API_PREFIX
from worker.a1111.keepalive import (
    StaleConnection,
    TrackedAdapter,
    died_on_reused_connection,
    forget_last_request,
)
from worker.a1111.process import EngineProcess
from worker.a1111.responses import decode
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineFailed, EngineUnavailable
from worker.redaction import public_url

log = logging.getLogger(__name__)

RETRY_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.2
_RETRY_STATUSES = frozenset({502, 503, 504})


class _RetryableStatus(Exception):
    """A 502/503/504 on a safe request: raised only so tenacity retries it."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def route(endpoint: str) -> str:
    """An endpoint's path: below ``/sdapi/v1/``, or from the root when it starts with ``/`` (extensions)."""
    return endpoint if endpoint.startswith("/") else API_PREFIX + endpoint


def never_connected(exc: BaseException) -> bool:
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


def transport_reason(exc: BaseException) -> str:
    """A short cause for a transport failure, without URLs' credentials or object reprs."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if never_connected(exc):
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


class Transport:
    """Requests to one engine's ``/sdapi/v1``.

    Args:
        base_url: the server root, with or without a trailing ``/``.
        process: the engine process (a dead one ends retries at once).
        session: an injected session (not closed by ``close()``); by default a fresh one that ignores the
            environment's proxies (the engine is local) and tracks kept-alive connections.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        request_timeout_s: float,
        auth: tuple[str, str] | None,
        process: EngineProcess,
        session: requests.Session | None = None,
        clock: Clock = SYSTEM_CLOCK,
        engine_name: str = "A1111",
    ) -> None:
        self._base = str(base_url).rstrip("/")
        self.engine_name = engine_name
        self.public_base = public_url(self._base)
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self._auth = requests.auth.HTTPBasicAuth(*auth) if auth else None
        self._process = process
        self._clock = clock
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.mount("http://", TrackedAdapter())
            session.mount("https://", TrackedAdapter())
        self._session = session

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def url(self, endpoint: str) -> str:
        return self._base + route(endpoint)

    @staticmethod
    def what(method: str, endpoint: str) -> str:
        return f"{method} {route(endpoint)}"

    def request_once(self, method: str, endpoint: str, *, timeout: tuple[float, float]) -> requests.Response:
        """One bare request, no retry, no error mapping (readiness polls and the interrupt use it)."""
        return self._session.request(
            method, self.url(endpoint), auth=self._auth, timeout=timeout, allow_redirects=False
        )

    def get(self, endpoint: str, params: dict[str, str] | None = None) -> Any:
        """GET with retries; a read timeout on a cheap listing means the engine is wedged."""
        try:
            response = self.send(
                "GET", endpoint, read_timeout_s=self.request_timeout_s, params=params, idempotent=True
            )
        except requests.ReadTimeout:
            raise self.wedged(self.what("GET", endpoint), self.request_timeout_s) from None
        return self.decode("GET", endpoint, response)

    def decode(self, method: str, endpoint: str, response: requests.Response) -> Any:
        """``worker.a1111.responses.decode``, naming this engine in its errors."""
        return decode(self.what(method, endpoint), method, endpoint, response, engine=self.engine_name)

    def wedged(self, what: str, timeout_s: float) -> EngineUnavailable:
        return EngineUnavailable(
            f"{self.engine_name} did not answer {what} within {timeout_s:g} s; the engine is wedged"
        )

    def _send_once(
        self,
        method: str,
        endpoint: str,
        read_timeout_s: float,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        retry_statuses: bool,
    ) -> requests.Response:
        forget_last_request()
        try:
            response = self._session.request(
                method,
                self.url(endpoint),
                params=params,
                json=body,
                auth=self._auth,
                timeout=(self.connect_timeout_s, read_timeout_s),
                allow_redirects=False,
            )
        except requests.ConnectionError as exc:
            if died_on_reused_connection(exc):
                # Every idle connection may be as stale as this one: the retry must open a fresh one.
                for adapter in self._session.adapters.values():
                    adapter.close()
                raise StaleConnection(*exc.args, request=exc.request) from exc
            raise
        if retry_statuses and response.status_code in _RETRY_STATUSES:
            raise _RetryableStatus(response)
        return response

    def _retrying(self, what: str, idempotent: bool, attempts: int) -> Retrying:
        backoff = wait_exponential(multiplier=RETRY_BACKOFF_S, max=2.0)

        def should_retry(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if exc is None:
                return False
            if idempotent:
                transient = isinstance(exc, (_RetryableStatus, requests.ConnectionError))
            elif isinstance(exc, StaleConnection):
                transient = state.attempt_number == 1
            else:
                transient = never_connected(exc)
            return transient and self._process.is_alive()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return 0.0 if isinstance(exc, StaleConnection) else float(backoff(state))

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, StaleConnection):
                reason = "a kept-alive connection the engine had closed; retrying on a fresh one"
            elif isinstance(exc, _RetryableStatus):
                reason = str(exc)
            else:
                reason = transport_reason(exc or Exception())
            log.warning("%s failed (%s); retry %d of %d", what, reason, state.attempt_number, attempts - 1)

        return Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait,
            retry=should_retry,
            before_sleep=log_retry,
            sleep=self._clock.sleep,
            reraise=True,
        )

    def send(
        self,
        method: str,
        endpoint: str,
        *,
        read_timeout_s: float,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool,
        attempts: int = RETRY_ATTEMPTS,
    ) -> requests.Response:
        """One request with the retry policy (module docstring); transport failures as typed errors."""
        what = self.what(method, endpoint)
        retrying = self._retrying(what, idempotent, attempts)
        try:
            response: requests.Response = retrying(
                self._send_once, method, endpoint, read_timeout_s, params, body, idempotent
            )
        except _RetryableStatus as exc:
            if not self._process.is_alive():
                raise self._process.dead_error() from None
            return exc.response
        except requests.ReadTimeout:
            raise
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            if not self._process.is_alive():
                raise self._process.dead_error() from exc
            reason = transport_reason(exc)
            raise EngineUnavailable(
                f"{self.engine_name} at {self.public_base} failed on {what}: {reason}",
                details={"endpoint": endpoint, "reason": reason},
            ) from exc
        except requests.RequestException as exc:
            raise EngineFailed(
                f"{self.engine_name} request {what} failed: {transport_reason(exc)}",
                details={"endpoint": endpoint},
            ) from exc
        return response
