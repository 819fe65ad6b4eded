"""Verified, resumable, bounded downloads of model files.

One pass streams the body to a hidden temp file in the destination folder while computing sha256;
a dropped connection resumes with an HTTP Range request; transient failures retry with backoff
(tenacity) inside an overall deadline; every redirect hop is checked against the host allowlist;
tokens go only to their own hosts, over https (or loopback); the file is fsynced and renamed into
place only after its size, hash and safetensors header check out, so the final path never holds a
half or wrong file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential
from tqdm import tqdm

from worker.errors import DownloadFailed, InputInvalid
from worker.redaction import public_url
from worker.registry.names import safe_relative_name
from worker.registry.safetensors_header import HeaderError, read_header
from worker.registry.store import fsync_dir

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024
MAX_REDIRECTS = 10
#: kept free on the volume beyond the file itself (registry writes, A1111 caches)
DISK_MARGIN_BYTES = 64 * 1024 * 1024
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/problem+json")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Transient(Exception):
    """A failure worth retrying (dropped connection, 5xx, 429, timeout)."""


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


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    dest_dir: Path
    key: str  # names the temp file; unique per model (the caller holds a lock on it)
    file_name: str | None = None  # final name; None = from Content-Disposition, else the URL
    expected_sha256: str | None = None
    expected_size: int | None = None  # exact byte count, when known
    approx_size: int | None = None  # for space checks only (Civitai's sizeKB)
    allowed_suffixes: tuple[str, ...] = (".safetensors",)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    file_name: str
    sha256: str
    size: int
    seconds: float
    resumed: int  # how many Range resumes it took
    hash_verified: bool


@dataclass
class _State:
    offset: int = 0
    total: int | None = None
    hasher: Any = None
    file_name: str | None = None
    expected_sha256: str | None = None
    resumed: int = 0
    reserved: bool = False


class Downloader:
    """Streams URLs to files with the guarantees in the module docstring.

    Args:
        allowed_hosts: allowlist for the first URL and every redirect hop.
        max_bytes: refuse anything larger (declared or actually received).
        timeout_s: connect and per-read (stall) timeout.
        deadline_s: default overall budget per download (None = only the stall timeout).
        tokens: which secret goes to which hosts.
        attempts, backoff_s: retry policy for transient failures.
        disk_free: free bytes at a path (injectable for tests).
        progress: draw a tqdm bar on stderr.
    """

    def __init__(
        self,
        *,
        allowed_hosts: tuple[str, ...],
        max_bytes: int,
        timeout_s: float,
        deadline_s: float | None = None,
        tokens: tuple[TokenRule, ...] = (),
        attempts: int = 5,
        backoff_s: float = 0.5,
        disk_free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
        session: requests.Session | None = None,
        progress: bool = False,
    ) -> None:
        self.allowed_hosts = allowed_hosts
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.tokens = tokens
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.disk_free = disk_free
        self.session = session or requests.Session()
        self.progress = progress

    # ---- public -------------------------------------------------------------------------------

    def fetch(
        self,
        req: DownloadRequest,
        *,
        deadline_s: float | None = None,
        reserve: Callable[[int], None] | None = None,
    ) -> DownloadResult:
        """Download ``req.url`` into ``req.dest_dir``; raise ``DownloadFailed`` (never a half file).

        ``reserve(bytes_needed)`` is called once the size is known, before writing; it may evict
        other files or raise ``DownloadFailed`` (quota).
        """
        budget = deadline_s if deadline_s is not None else self.deadline_s
        started = time.monotonic()
        deadline = started + budget if budget is not None else None
        if not host_allowed(req.url, self.allowed_hosts):
            raise DownloadFailed(
                f"host of {public_url(req.url)} is not in WORKER_DOWNLOAD_ALLOWED_HOSTS",
                details={"host": urlsplit(req.url).hostname},
            )
        req.dest_dir.mkdir(parents=True, exist_ok=True)
        part = req.dest_dir / f".{req.key}.part"
        with contextlib.suppress(FileNotFoundError):
            part.unlink()  # leftovers of a killed process: we hold the model lock, nobody writes it
        state = _State(hasher=hashlib.sha256(), expected_sha256=req.expected_sha256, file_name=req.file_name)
        if req.file_name is not None:
            self._check_name(req.file_name, req)
        known = req.expected_size or req.approx_size
        if known is not None:
            self._check_size(known, req)
            if reserve is not None:
                reserve(known)
                state.reserved = True
            self._check_disk(req.dest_dir, known)
        try:
            retrying = Retrying(
                stop=stop_after_attempt(self.attempts)
                | stop_after_delay(budget if budget is not None else 1e9),
                wait=wait_exponential(multiplier=self.backoff_s, max=10),
                retry=retry_if_exception_type(_Transient),
                reraise=True,
                before_sleep=lambda rs: log.warning(
                    "download of %s: %s; retrying (attempt %d)",
                    public_url(req.url),
                    rs.outcome.exception() if rs.outcome else "?",
                    rs.attempt_number + 1,
                ),
            )
            with self._bar(req) as bar:
                for attempt in retrying:
                    with attempt:
                        self._attempt(req, part, state, deadline, reserve, bar)
            return self._finish(req, part, state, time.monotonic() - started)
        except _Transient as exc:
            raise DownloadFailed(
                f"download of {public_url(req.url)} failed after {self.attempts} attempts: {exc}"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    # ---- one attempt ---------------------------------------------------------------------------

    def _attempt(
        self,
        req: DownloadRequest,
        part: Path,
        state: _State,
        deadline: float | None,
        reserve: Callable[[int], None] | None,
        bar: tqdm[Any] | None,
    ) -> None:
        self._check_deadline(deadline, req)
        resp = self._open(req, state, deadline)
        with resp:
            if resp.status_code == 206 and state.offset > 0:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != state.offset:
                    self._restart(part, state, bar)
                    raise _Transient(f"server resumed at byte {start}, wanted {state.offset}")
                state.resumed += 1
                remaining = _int(resp.headers.get("Content-Length"))
                total = state.offset + remaining if remaining is not None else state.total
            else:
                if state.offset > 0:
                    log.info("server ignored the Range request; restarting %s", public_url(req.url))
                    self._restart(part, state, bar)
                total = _int(resp.headers.get("Content-Length"))
            self._check_headers(req, resp, state)
            if total is not None:
                self._check_size(total, req)
                if state.total is None:
                    if reserve is not None and not state.reserved:
                        reserve(total)
                        state.reserved = True
                    self._check_disk(req.dest_dir, total - state.offset)
                state.total = total
                if bar is not None and bar.total is None:
                    bar.total = total
                    bar.refresh()
            self._stream(req, resp, part, state, deadline, bar)

    def _open(self, req: DownloadRequest, state: _State, deadline: float | None) -> requests.Response:
        url = req.url
        for _hop in range(MAX_REDIRECTS + 1):
            if not host_allowed(url, self.allowed_hosts):
                raise DownloadFailed(
                    f"refused redirect to {public_url(url)}: host not in WORKER_DOWNLOAD_ALLOWED_HOSTS",
                    details={"host": urlsplit(url).hostname},
                )
            headers = {"Accept-Encoding": "identity", "User-Agent": "a1111-runpod-worker"}
            if state.offset > 0:
                headers["Range"] = f"bytes={state.offset}-"
            token = self._token_for(url)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            read_timeout = self.timeout_s
            if deadline is not None:
                read_timeout = max(0.05, min(read_timeout, deadline - time.monotonic()))
            try:
                resp = self.session.get(
                    url,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(min(self.timeout_s, read_timeout), read_timeout),
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Transient(f"{exc.__class__.__name__} contacting {urlsplit(url).netloc}") from None
            except requests.RequestException as exc:
                raise DownloadFailed(
                    f"request to {public_url(url)} failed: {exc.__class__.__name__}"
                ) from None
            linked = resp.headers.get("X-Linked-ETag", "").strip('"').lower()
            if state.expected_sha256 is None and _SHA256.match(linked):
                state.expected_sha256 = linked  # Hugging Face announces the LFS sha256 here
            if resp.is_redirect:
                location = resp.headers.get("Location", "")
                resp.close()
                url = urljoin(url, location)
                continue
            if resp.status_code in (200, 206):
                return resp
            resp.close()
            self._status_error(req, url, resp.status_code)
        raise DownloadFailed(f"too many redirects from {public_url(req.url)}")

    def _status_error(self, req: DownloadRequest, url: str, status: int) -> None:
        where = public_url(url)
        if status == 416:
            raise _Transient("server refused the resume range (416)")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status} from {urlsplit(url).netloc}")
        if status in (401, 403):
            hint = "" if self._token_for(url) else " (a token may be needed: CIVITAI_TOKEN or HF_TOKEN)"
            raise DownloadFailed(f"HTTP {status} (not authorised) from {where}{hint}")
        raise DownloadFailed(f"HTTP {status} from {where}", details={"status": status})

    def _check_headers(self, req: DownloadRequest, resp: requests.Response, state: _State) -> None:
        ctype = resp.headers.get("Content-Type", "").lower()
        if ctype.startswith(_TEXT_TYPES):
            raise DownloadFailed(
                f"{public_url(req.url)} answered with {ctype.split(';')[0]} instead of a model file "
                "(an error or login page?)"
            )
        served = content_disposition_name(resp.headers.get("Content-Disposition"))
        if served is not None:
            try:
                safe_relative_name(served, what="Content-Disposition file name")
            except InputInvalid as exc:
                raise DownloadFailed(f"refused download: {exc.message}") from None
            if "/" in served:
                raise DownloadFailed(f"refused download: Content-Disposition file name {served!r} has a path")
        if state.file_name is None:
            name = served or unquote(urlsplit(resp.url or req.url).path.rsplit("/", 1)[-1])
            state.file_name = self._check_name(name, req)

    def _stream(
        self,
        req: DownloadRequest,
        resp: requests.Response,
        part: Path,
        state: _State,
        deadline: float | None,
        bar: tqdm[Any] | None,
    ) -> None:
        raw = resp.raw
        mode = "ab" if state.offset > 0 else "wb"
        with open(part, mode) as fh:
            if fh.tell() != state.offset:  # never append after bytes we did not hash
                fh.truncate(state.offset)
                fh.seek(state.offset)
            while True:
                self._check_deadline(deadline, req)
                try:
                    chunk = raw.read1(CHUNK_BYTES)
                except Exception as exc:  # urllib3 raises several types for a dropped connection
                    fh.flush()
                    raise _Transient(
                        f"connection lost after {state.offset} bytes ({exc.__class__.__name__})"
                    ) from None
                if not chunk:
                    break
                fh.write(chunk)
                state.hasher.update(chunk)
                state.offset += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if state.offset > self.max_bytes:
                    raise DownloadFailed(
                        f"{public_url(req.url)} exceeds WORKER_DOWNLOAD_MAX_BYTES ({self.max_bytes} bytes)"
                    )
            fh.flush()
            os.fsync(fh.fileno())
        if state.total is not None and state.offset < state.total:
            raise _Transient(f"connection closed after {state.offset} of {state.total} bytes")

    # ---- completion and checks -------------------------------------------------------------------

    def _finish(self, req: DownloadRequest, part: Path, state: _State, seconds: float) -> DownloadResult:
        assert state.file_name is not None
        digest = state.hasher.hexdigest()
        size = state.offset
        if req.expected_size is not None and size != req.expected_size:
            raise DownloadFailed(f"{state.file_name}: received {size} bytes, expected {req.expected_size}")
        if state.expected_sha256 is not None and digest != state.expected_sha256:
            raise DownloadFailed(
                f"{state.file_name}: sha256 mismatch (got {digest[:12]}…, expected "
                f"{state.expected_sha256[:12]}…); file discarded",
                details={"sha256": digest, "expected_sha256": state.expected_sha256},
            )
        if state.file_name.lower().endswith(".safetensors"):
            try:
                read_header(part, file_size=size)
            except HeaderError as exc:
                raise DownloadFailed(f"{state.file_name}: not a valid safetensors file ({exc})") from None
        final = req.dest_dir / state.file_name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        fsync_dir(final.parent)
        log.info("downloaded %s (%d bytes, %.1fs, %d resumes)", state.file_name, size, seconds, state.resumed)
        return DownloadResult(
            final, state.file_name, digest, size, seconds, state.resumed, state.expected_sha256 is not None
        )

    def _check_name(self, name: str, req: DownloadRequest) -> str:
        try:
            name = safe_relative_name(name, what="download file name")
        except InputInvalid as exc:
            raise DownloadFailed(f"refused download: {exc.message}") from None
        if not name.lower().endswith(req.allowed_suffixes):
            raise DownloadFailed(
                f"refused download: {name!r} is not one of {', '.join(req.allowed_suffixes)}"
            )
        return name

    def _check_size(self, size: int, req: DownloadRequest) -> None:
        if size > self.max_bytes:
            raise DownloadFailed(
                f"{public_url(req.url)} is {size} bytes, above WORKER_DOWNLOAD_MAX_BYTES ({self.max_bytes})"
            )

    def _check_disk(self, folder: Path, needed: int) -> None:
        free = self.disk_free(folder)
        if free < needed + DISK_MARGIN_BYTES:
            raise DownloadFailed(
                f"not enough free space in {folder}: need {needed + DISK_MARGIN_BYTES} bytes, have {free}"
            )

    def _check_deadline(self, deadline: float | None, req: DownloadRequest) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise DownloadFailed(f"download of {public_url(req.url)} ran past its deadline")

    def _restart(self, part: Path, state: _State, bar: tqdm[Any] | None) -> None:
        state.offset = 0
        state.hasher = hashlib.sha256()
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        if bar is not None:
            bar.reset(total=bar.total)

    def _token_for(self, url: str) -> str | None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" and not _is_loopback(host):
            return None
        for rule in self.tokens:
            if rule.token and any(url.startswith(p.rstrip("/") + "/") for p in rule.prefixes):
                return rule.token
        for rule in self.tokens:
            if rule.token and host_allowed(url, rule.hosts):
                return rule.token
        return None

    def _bar(self, req: DownloadRequest) -> contextlib.AbstractContextManager[tqdm[Any] | None]:
        if not self.progress:
            return contextlib.nullcontext()
        return tqdm(
            total=req.expected_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=req.file_name or req.key,
            file=sys.stderr,
            leave=False,
        )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m[1]) if m else None
