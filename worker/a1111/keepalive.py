"""Was a failed request sent on a kept-alive connection the engine had already closed?

The engine closes idle and post-error connections. A request written to such a socket dies without a single
response byte: it never reached the engine, so even a txt2img may be resent, once, on a fresh connection.
requests cannot tell this case apart, so the connections here record, per thread, whether the last request
went out on a socket that had already served one.
"""

from __future__ import annotations

import http.client
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_sent = threading.local()


class StaleConnection(requests.ConnectionError):
    """A reused keep-alive connection died before any response byte: the request never reached the engine."""


class _TrackedConnectionMixin:
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


class TrackedAdapter(HTTPAdapter):
    """requests' adapter with connections that know whether they were reused."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


def forget_last_request() -> None:
    """Call before each request, so ``died_on_reused_connection`` speaks of this one only."""
    _sent.reused = False


def died_on_reused_connection(exc: BaseException) -> bool:
    """True when this thread's last request went out on a reused socket and got no response at all."""
    return bool(getattr(_sent, "reused", False)) and _no_response(exc)


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
