"""Forward a request to the worker's routes server with a deadline (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

Reply = tuple[int, bytes]


def _error(status: int, message: str) -> Reply:
    return status, json.dumps({"error": message}).encode()


def forward(method: str, url: str, body: bytes | None, *, timeout_s: float) -> Reply:
    """``(status, JSON body)``; an unreachable routes server becomes 503 ``engine_unavailable``."""
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - loopback URL from config
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except TimeoutError:
        return _error(504, f"timeout: the worker routes server did not answer within {timeout_s:g} s")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return _error(
            503,
            f"engine_unavailable: the worker routes server at {url.split('/worker/')[0]} is not reachable "
            f"({reason}); it runs with WORKER_MODE=api (docs/deploying.md)",
        )
