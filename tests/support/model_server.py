"""A real loopback HTTP file server with fault injection, for registry download tests.

``ModelServer`` serves registered bodies (with Range support) and JSON routes (a fake Civitai API),
counts requests per path, and can inject faults per path: drop the connection mid-body, answer
with error statuses first, trickle bytes slower than any deadline, redirect, or send odd headers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    #: statuses returned (one per request) before the real answer, e.g. [500]
    fail_statuses: list[int] = field(default_factory=list)
    #: for the next ``drop_times`` full (non-Range) GETs, close the connection after this many bytes
    drop_after: int | None = None
    drop_times: int = 1
    #: seconds to sleep between single bytes (a server slower than any deadline)
    trickle_s: float | None = None
    redirect_to: str | None = None
    honour_range: bool = True
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class ModelServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            def do_HEAD(self) -> None:
                server._handle(self, head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ---- test API --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_on(self, host: str) -> str:
        return f"http://{host}:{self.port}"

    def add(self, path: str, body: bytes = b"", **kwargs: Any) -> Route:
        route = Route(body=body, **kwargs)
        self.routes[path] = route
        return route

    def add_json(self, path: str, doc: Any) -> Route:
        return self.add(path, json_body=doc, content_type="application/json")

    def gets(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path.split("?")[0] == path]

    # ---- serving ---------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = h.path.split("?")[0]
        with self._lock:
            self.requests.append(Seen(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}))
            route = self.routes.get(path)
            status = route.fail_statuses.pop(0) if route and route.fail_statuses else None
        try:
            if route is None:
                return self._send_simple(h, 404, b"not found")
            if route.delay_s:
                time.sleep(route.delay_s)
            if status is not None:
                return self._send_simple(h, status, b"injected failure")
            if route.redirect_to is not None:
                h.send_response(302)
                h.send_header("Location", route.redirect_to)
                h.send_header("Content-Length", "0")
                for key, value in route.headers.items():
                    h.send_header(key, value)
                h.end_headers()
                return None
            if route.json_body is not None:
                return self._send_simple(h, 200, json.dumps(route.json_body).encode(), "application/json")
            self._send_body(h, route, head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return None

    def _send_simple(
        self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "text/plain"
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _send_body(self, h: BaseHTTPRequestHandler, route: Route, head: bool) -> None:
        body = route.body
        start = 0
        range_header = h.headers.get("Range")
        if range_header and route.honour_range and range_header.startswith("bytes="):
            start = int(range_header[6:].split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", route.content_type)
        h.send_header("Content-Length", str(len(body) - start))
        h.send_header("Accept-Ranges", "bytes")
        for key, value in route.headers.items():
            h.send_header(key, value)
        h.end_headers()
        if head:
            return
        payload = body[start:]
        with self._lock:
            drop = (
                route.drop_after
                if (route.drop_after is not None and route.drop_times > 0 and start == 0)
                else None
            )
            if drop is not None:
                route.drop_times -= 1
        if drop is not None:
            h.wfile.write(payload[:drop])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if route.trickle_s is not None:
            for i in range(len(payload)):
                h.wfile.write(payload[i : i + 1])
                h.wfile.flush()
                time.sleep(route.trickle_s)
            return
        h.wfile.write(payload)


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
