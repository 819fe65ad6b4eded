"""An image given as a URL: fetched by the worker (never by A1111) under the model downloads' SSRF policy.

Off unless ``WORKER_ALLOW_IMAGE_URLS`` is on. Then only ``https`` (plain ``http`` only to an allowlisted
loopback host, for tests), only hosts on ``WORKER_DOWNLOAD_ALLOWED_HOSTS`` at every redirect hop, at most
``WORKER_IMAGE_MAX_BYTES`` and within ``WORKER_IMAGE_URL_TIMEOUT_S`` for the whole fetch. Messages show
``scheme://host/path`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from worker.clock import SYSTEM_CLOCK, Clock
from worker.input_images.refusal import refuse
from worker.redaction import public_url
from worker.url_policy import host_allowed, may_carry_token

MAX_REDIRECTS = 5
_CHUNK = 1 << 16


@dataclass(frozen=True)
class UrlPolicy:
    allowed: bool
    allowed_hosts: tuple[str, ...]
    max_bytes: int
    timeout_s: float


def is_url(text: str) -> bool:
    return text.lstrip()[:8].lower().startswith(("https://", "http://"))


class ImageFetcher:
    """Fetches image URLs for one job, each under the policy and its own deadline."""

    def __init__(
        self, policy: UrlPolicy, *, session: requests.Session | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.policy = policy
        self._session = session or requests.Session()
        self._clock = clock

    def fetch(self, url: str, where: str) -> bytes:
        """The bytes at ``url``, or ``InputInvalid`` naming ``where`` and why it was not fetched."""
        url = url.strip()
        if not self.policy.allowed:
            raise refuse(
                where,
                "image URLs are off on this worker (WORKER_ALLOW_IMAGE_URLS); send the image as base64",
            )
        deadline = self._clock.monotonic() + self.policy.timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            self._check_url(url, where)
            response = self._get(url, where, deadline)
            if not response.is_redirect:
                return self._read(response, url, where, deadline)
            location = response.headers.get("location", "")
            response.close()
            url = urljoin(url, location)
        raise refuse(where, f"more than {MAX_REDIRECTS} redirects from {public_url(url)}")

    def _check_url(self, url: str, where: str) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme != "https" and not (scheme == "http" and may_carry_token(url)):
            raise refuse(where, f"{public_url(url)}: only https image URLs are fetched")
        if not host_allowed(url, self.policy.allowed_hosts):
            raise refuse(
                where,
                f"{public_url(url)}: host not in WORKER_DOWNLOAD_ALLOWED_HOSTS "
                f"({', '.join(self.policy.allowed_hosts) or 'empty'})",
            )

    def _remaining(self, url: str, where: str, deadline: float) -> float:
        left = deadline - self._clock.monotonic()
        if left <= 0:
            raise refuse(
                where,
                f"{public_url(url)} took over {self.policy.timeout_s:g} s (WORKER_IMAGE_URL_TIMEOUT_S)",
            )
        return left

    def _get(self, url: str, where: str, deadline: float) -> requests.Response:
        left = self._remaining(url, where, deadline)
        try:
            response = self._session.get(
                url, stream=True, allow_redirects=False, timeout=(min(left, 10.0), left)
            )
        except requests.RequestException as exc:
            raise refuse(where, f"{public_url(url)} could not be fetched ({type(exc).__name__})") from None
        if response.is_redirect or 200 <= response.status_code < 300:
            return response
        response.close()
        raise refuse(where, f"{public_url(url)} answered HTTP {response.status_code}")

    def _read(self, response: requests.Response, url: str, where: str, deadline: float) -> bytes:
        cap = self.policy.max_bytes
        with response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise refuse(
                    where,
                    f"{public_url(url)} is {int(declared):,} bytes, over {cap:,} (WORKER_IMAGE_MAX_BYTES)",
                )
            body = bytearray()
            while True:  # read1: what has arrived, so a trickling server meets the deadline too
                self._remaining(url, where, deadline)
                try:
                    chunk = response.raw.read1(_CHUNK, decode_content=True)
                except Exception as exc:  # urllib3 raises several types for a dropped connection
                    raise refuse(where, f"{public_url(url)} broke off ({type(exc).__name__})") from None
                if not chunk:
                    break
                body += chunk
                if len(body) > cap:
                    raise refuse(
                        where, f"{public_url(url)} sends more than {cap:,} bytes (WORKER_IMAGE_MAX_BYTES)"
                    )
        return bytes(body)
