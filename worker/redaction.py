"""What must never reach a message or a log line: base64 payloads, secrets, credentials in URLs.

One definition each, used by the A1111 client, the uploader, the log filter and the registry's downloader.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

# A run of 200+ base64 characters is an image or a weight blob, never something a reader needs.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{200,}")
#: secrets shorter than this are not masked: replacing every "ab" in a log would garble it for nothing
MIN_SECRET_CHARS = 4


def redact_base64(text: str) -> str:
    """Each run of 200+ base64 characters becomes ``<N chars of base64>``."""
    return _BASE64_RUN.sub(lambda match: f"<{len(match.group(0))} chars of base64>", text)


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Each secret's value (``MIN_SECRET_CHARS`` or longer) becomes ``***``."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    return text


def public_url(url: str) -> str:
    """``scheme://host[:port]/path`` only: no ``user:password@``, no query (signed URLs), no fragment."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
