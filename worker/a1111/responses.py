"""An engine's HTTP answer → its JSON body, or the typed error (``worker.errors``) that says what went wrong.

* 2xx with a JSON body → the body; 2xx without one, 3xx, other 5xx → ``EngineFailed``;
* 401/403 → ``EngineFailed`` (the worker's credentials, not the user's fault);
* 422 and other 4xx → ``InputInvalid`` (a user mistake: the worker is kept);
* a model file removed between pre-flight and generation → ``ModelNotFound``;
* 500 mentioning out-of-memory → ``OutOfMemory``.

Messages are one short line: A1111's error body summarised, base64 runs replaced, never a traceback.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests

from worker.errors import EngineFailed, InputInvalid, ModelNotFound, OutOfMemory
from worker.redaction import redact_base64

_BODY_LIMIT = 300
_OOM_MARKERS = ("outofmemoryerror", "cuda out of memory", "out of memory")
_MODEL_WORDS = ("checkpoint", "lora", "vae", "embedding")
_MISSING_PATH = re.compile(r"No such file or directory: '([^']*)'")


def truncate(text: str, limit: int = _BODY_LIMIT) -> str:
    """One line of at most ``limit`` characters, base64 runs replaced."""
    text = " ".join(redact_base64(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_errors(detail: list[Any]) -> str:
    """FastAPI's ``[{"loc": [...], "msg": ...}, ...]`` as ``field: message; ...``."""
    parts = []
    for item in detail:
        if not isinstance(item, dict):
            parts.append(str(item))
            continue
        loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query")]
        msg = str(item.get("msg", "invalid"))
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts)


def summarise_body(body: str) -> str:
    """A1111's error body as one short line: ``<Class>: <errors>``, FastAPI details, or the raw text."""
    try:
        data = json.loads(body)
    except ValueError:
        return truncate(body) or "(empty body)"
    if not isinstance(data, dict):
        return truncate(body)
    detail = data.get("detail")
    if isinstance(detail, list):
        return truncate(_validation_errors(detail))
    cls, errors = data.get("error"), data.get("errors")
    if cls and errors:
        return truncate(f"{cls}: {errors}")
    if detail or cls:
        return truncate(str(detail or cls))
    return truncate(body)


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


def is_oom(body: str) -> bool:
    lowered = body.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def decode(
    what: str, method: str, endpoint: str, response: requests.Response, *, engine: str = "A1111"
) -> Any:
    """The JSON body of a 2xx answer to ``what`` (``"POST /sdapi/v1/txt2img"``), or the typed error.

    ``engine`` names the server in messages (``A1111``, ``the embedded engine``): who refused.
    """
    status = response.status_code
    details: dict[str, Any] = {"endpoint": endpoint, "status": status}
    if 200 <= status < 300:
        try:
            return response.json()
        except ValueError:
            raise EngineFailed(
                f"{engine} answered {what} with HTTP {status} but the body is not JSON: "
                f"{truncate(response.text)}",
                details=details,
            ) from None
    text = response.text
    summary = summarise_body(text)
    details["detail"] = summary
    if status in (401, 403):
        # Not the user's fault: the worker's credentials (WORKER_A1111_AUTH) do not match --api-auth.
        raise EngineFailed(
            f"{engine} refused {what} with HTTP {status} ({summary}); check WORKER_A1111_AUTH",
            details=details,
        )
    if status == 422:
        raise InputInvalid(f"{engine} rejected the request: {summary}", details=details)
    gone = _vanished_model(method, status, text, summary)
    if gone is not None:
        raise ModelNotFound(f"{gone} (on {what}); the job can be retried", details=details)
    if 400 <= status < 500:
        raise InputInvalid(f"{engine} rejected {what} with HTTP {status}: {summary}", details=details)
    if status >= 500 and is_oom(text):
        raise OutOfMemory(f"{engine} ran out of GPU memory on {what}: {summary}", details=details)
    raise EngineFailed(f"{engine} answered {what} with HTTP {status}: {summary}", details=details)
