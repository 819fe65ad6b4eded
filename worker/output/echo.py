"""The request A1111 echoes in its answer's ``parameters``, less the images the caller sent.

A1111 v1.10.1 returns the request it was given as ``parameters``, ``alwayson_scripts`` included: every
ControlNet control image and mask comes back whole, megabytes per job, which the worker would measure, carry
and return for nothing (docs/performance.md, "Extensions"). Each such image becomes a short placeholder that
still says what was sent: ``<png image: 1.05 MB of base64, sha256 3f2a9c81d0e4>`` (the size of the base64
text, and the first 12 hex digits of its sha256, so a caller can tell which of its images it was). Only
``parameters.alwayson_scripts`` is touched: the generated images are ``images``, and an img2img's init images
come back in ``parameters`` only when the job asked for them (``include_init_images``).
"""

from __future__ import annotations

import binascii
import hashlib
import re
from typing import Any

from worker.output.images import sniff_format

#: base64 this long that is no image is a blob all the same (an IP-Adapter tensor), never a prompt or a name
MIN_BLOB_CHARS = 256
_BASE64_START = re.compile(r"(?:data:[\w/+.-]*(?:;[\w=.-]*)*,)?(?P<head>[A-Za-z0-9+/]{16})")
_BLOB_START = re.compile(r"[A-Za-z0-9+/]{64}")
HASH_DIGITS = 12


def trim_echoed_images(parameters: Any) -> Any:
    """``parameters`` with each image (or other base64 blob) in its ``alwayson_scripts`` replaced."""
    if not isinstance(parameters, dict) or not parameters.get("alwayson_scripts"):
        return parameters
    return {**parameters, "alwayson_scripts": _trimmed(parameters["alwayson_scripts"])}


def _trimmed(value: Any) -> Any:
    if isinstance(value, str):
        return placeholder(value)
    if isinstance(value, dict):
        return {key: _trimmed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trimmed(item) for item in value]
    return value


def placeholder(text: str) -> str:
    """``<png image: 1.05 MB of base64, sha256 …>`` for an image in base64 (a data URI too), ``<base64 data:
    …>`` for another long base64 blob; any other text as it is."""
    found = _BASE64_START.match(text)
    if found is None:
        return text
    try:
        kind = sniff_format(binascii.a2b_base64(found.group("head")))
    except binascii.Error:
        return text
    if kind is None and not (len(text) >= MIN_BLOB_CHARS and _BLOB_START.match(text, found.start("head"))):
        return text
    what = f"{kind} image" if kind else "base64 data"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_DIGITS]
    return f"<{what}: {_size(len(text))} of base64, sha256 {digest}>"


def _size(chars: int) -> str:
    if chars >= 1_000_000:
        return f"{chars / 1_000_000:.2f} MB"
    return f"{chars / 1000:.1f} kB"
