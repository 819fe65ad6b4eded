"""Which URLs the worker may fetch, which may carry a token, and what of a URL may be shown.

A shared leaf: the registry's downloads and the job path's image URLs (``worker.input_images``) both use it.
One policy for the first URL, every redirect hop and the Civitai API: hosts must be on the allowlist
(``WORKER_DOWNLOAD_ALLOWED_HOSTS``); a token goes only to its own hosts and only over https (or loopback,
for tests); messages and logs show ``scheme://host/path`` only (no credentials, no signed query string).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote, urlsplit


def host_allowed(url: str, patterns: tuple[str, ...]) -> bool:
    """``host`` or ``host:port`` against the allowlist; ``*`` wildcards (``*.civitai.com``)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or parts.scheme not in ("http", "https"):
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for pattern in patterns:
        pattern = pattern.strip().lower()
        target = f"{host}:{port}" if ":" in pattern else host
        if fnmatch.fnmatchcase(target, pattern):
            return True
    return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_carry_token(url: str) -> bool:
    """Only https (or a loopback test server) ever carries a secret."""
    parts = urlsplit(url)
    return parts.scheme == "https" or _is_loopback((parts.hostname or "").lower())


def content_disposition_name(header: str | None) -> str | None:
    """File name from Content-Disposition (RFC 6266 ``filename*`` preferred), or None."""
    if not header:
        return None
    msg = Message()
    msg["content-disposition"] = header
    name = msg.get_filename()
    return unquote(name) if name else None


@dataclass(frozen=True)
class TokenRule:
    """Send ``token`` as ``Authorization: Bearer`` to hosts matching ``hosts`` only."""

    hosts: tuple[str, ...]
    token: str
    prefixes: tuple[str, ...] = ()  # or URLs under these bases (a configured API base)


def token_for(url: str, rules: tuple[TokenRule, ...]) -> str | None:
    """The token ``url`` may carry: a rule whose base prefixes it first, then one whose hosts match it."""
    if not may_carry_token(url):
        return None
    for rule in rules:
        if rule.token and any(url.startswith(p.rstrip("/") + "/") for p in rule.prefixes):
            return rule.token
    for rule in rules:
        if rule.token and host_allowed(url, rule.hosts):
            return rule.token
    return None
