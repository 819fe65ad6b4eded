"""Verified, resumable, bounded downloads of model files.

One pass streams the body to a hidden temp file in the destination folder while computing sha256;
a dropped connection resumes with an HTTP Range request; transient failures retry with backoff
(tenacity) inside an overall deadline, both on the injected clock; every redirect hop is checked against
the host allowlist and tokens go only to their own hosts (``url_policy``); the file is fsynced and renamed
into place only after its size, hash and safetensors header check out, so the final path never holds a
half or wrong file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential
from tqdm import tqdm

from worker.clock import SYSTEM_CLOCK, Clock, Deadline
from worker.errors import DownloadFailed, InputInvalid
from worker.redaction import public_url
from worker.registry.atomic_files import fsync_dir
from worker.registry.names import safe_relative_name
from worker.registry.safetensors_header import HeaderError, read_header
from worker.url_policy import TokenRule, content_disposition_name, host_allowed, token_for

log = logging.getLogger(__name__)

#: called after each chunk with (bytes received so far, the whole size when known); may raise to stop the
#: download (a cancelled job), which then ends like any failure: its temp file removed
TransferProgress = Callable[[int, int | None], None]

CHUNK_BYTES = 4 * 1024 * 1024
#: written bytes between two writeback starts (``_start_writeback``)
WRITEBACK_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 10
#: kept free on the volume beyond the file itself (registry writes, A1111 caches)
DISK_MARGIN_BYTES = 64 * 1024 * 1024
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/problem+json")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Transient(Exception):
    """A failure worth retrying (dropped connection, 5xx, 429, timeout)."""


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
    #: a config file (json, txt) is text: a text Content-Type is then no sign of an error page
    text_expected: bool = False


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
class _Transfer:
    """One download across its attempts: where the bytes go and what is known so far."""

    req: DownloadRequest
    part: Path
    deadline: Deadline | None
    reserve: Callable[[int], None] | None
    bar: tqdm[Any] | None = None
    offset: int = 0
    total: int | None = None
    hasher: Any = field(default_factory=hashlib.sha256)
    file_name: str | None = None
    expected_sha256: str | None = None
    resumed: int = 0
    reserved: bool = False
    on_progress: TransferProgress | None = None

    def restart(self) -> None:
        """Back to byte zero (a server that ignored our Range, or resumed elsewhere)."""
        self.offset = 0
        self.hasher = hashlib.sha256()
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()
        if self.bar is not None:
            self.bar.reset(total=self.bar.total)


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
        clock: deadlines and the waits between attempts.
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
        clock: Clock = SYSTEM_CLOCK,
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
        self.clock = clock

    # ---- public -------------------------------------------------------------------------------

    def fetch(
        self,
        req: DownloadRequest,
        *,
        deadline_s: float | None = None,
        reserve: Callable[[int], None] | None = None,
        progress: TransferProgress | None = None,
    ) -> DownloadResult:
        """Download ``req.url`` into ``req.dest_dir``; raise ``DownloadFailed`` (never a half file).

        ``reserve(bytes_needed)`` is called once the size is known, before writing; it may evict
        other files or raise ``DownloadFailed`` (quota). ``progress`` sees every chunk (``TransferProgress``).
        """
        budget = deadline_s if deadline_s is not None else self.deadline_s
        started = self.clock.monotonic()
        if not host_allowed(req.url, self.allowed_hosts):
            raise DownloadFailed(
                f"host of {public_url(req.url)} is not in WORKER_DOWNLOAD_ALLOWED_HOSTS",
                details={"host": urlsplit(req.url).hostname},
            )
        req.dest_dir.mkdir(parents=True, exist_ok=True)
        transfer = _Transfer(
            req,
            part=req.dest_dir / f".{req.key}.part",
            deadline=Deadline.after(self.clock, budget),
            reserve=reserve,
            file_name=req.file_name,
            expected_sha256=req.expected_sha256,
            on_progress=progress,
        )
        with contextlib.suppress(FileNotFoundError):
            transfer.part.unlink()  # leftovers of a killed process: we hold the model lock, nobody writes it
        try:
            self._check_before_request(transfer)
            with self._bar(req) as transfer.bar:
                for attempt in self._retrying(transfer):
                    with attempt:
                        self._attempt(transfer)
            return self._finish(transfer, self.clock.monotonic() - started)
        except _Transient as exc:
            raise DownloadFailed(
                f"download of {public_url(req.url)} failed after {self.attempts} attempts: {exc}"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                transfer.part.unlink()

    def _check_before_request(self, transfer: _Transfer) -> None:
        """Name, size and space checks that need no request (a known size reserves its room first)."""
        req = transfer.req
        if req.file_name is not None:
            self._check_name(req.file_name, req)
        known = req.expected_size or req.approx_size
        if known is None:
            return
        self._check_size(known, req)
        if transfer.reserve is not None:
            transfer.reserve(known)
            transfer.reserved = True
        self._check_disk(req.dest_dir, known)

    def _retrying(self, transfer: _Transfer) -> Retrying:
        def stop(state: RetryCallState) -> bool:
            out_of_time = transfer.deadline is not None and transfer.deadline.passed()
            return state.attempt_number >= self.attempts or out_of_time

        def before_sleep(state: RetryCallState) -> None:
            log.warning(
                "download of %s: %s; retrying (attempt %d)",
                public_url(transfer.req.url),
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number + 1,
            )

        return Retrying(
            stop=stop,
            wait=wait_exponential(multiplier=self.backoff_s, max=10),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
            sleep=self.clock.sleep,
            before_sleep=before_sleep,
        )

    # ---- one attempt ---------------------------------------------------------------------------

    def _attempt(self, transfer: _Transfer) -> None:
        self._check_deadline(transfer)
        resp = self._open(transfer)
        with resp:
            total = self._total_after_resume(transfer, resp)
            self._check_headers(transfer, resp)
            if total is not None:
                self._accept_total(transfer, total)
            self._stream(transfer, resp)

    def _total_after_resume(self, transfer: _Transfer, resp: requests.Response) -> int | None:
        """The whole file's size as this response tells it; a resume the server did not honour restarts."""
        if resp.status_code == 206 and transfer.offset > 0:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != transfer.offset:
                transfer.restart()
                raise _Transient(f"server resumed at byte {start}, wanted {transfer.offset}")
            transfer.resumed += 1
            remaining = _int(resp.headers.get("Content-Length"))
            return transfer.offset + remaining if remaining is not None else transfer.total
        if transfer.offset > 0:
            log.info("server ignored the Range request; restarting %s", public_url(transfer.req.url))
            transfer.restart()
        return _int(resp.headers.get("Content-Length"))

    def _accept_total(self, transfer: _Transfer, total: int) -> None:
        """A size learnt from the response: checked, room reserved (once), shown on the bar."""
        self._check_size(total, transfer.req)
        if transfer.total is None:
            if transfer.reserve is not None and not transfer.reserved:
                transfer.reserve(total)
                transfer.reserved = True
            self._check_disk(transfer.req.dest_dir, total - transfer.offset)
        transfer.total = total
        if transfer.bar is not None and transfer.bar.total is None:
            transfer.bar.total = total
            transfer.bar.refresh()

    def _open(self, transfer: _Transfer) -> requests.Response:
        """GET the URL, following redirects by hand so that every hop passes the allowlist."""
        url = transfer.req.url
        for _hop in range(MAX_REDIRECTS + 1):
            if not host_allowed(url, self.allowed_hosts):
                raise DownloadFailed(
                    f"refused redirect to {public_url(url)}: host not in WORKER_DOWNLOAD_ALLOWED_HOSTS",
                    details={"host": urlsplit(url).hostname},
                )
            resp = self._get(url, transfer)
            linked = resp.headers.get("X-Linked-ETag", "").strip('"').lower()
            if transfer.expected_sha256 is None and _SHA256.match(linked):
                transfer.expected_sha256 = linked  # Hugging Face announces the LFS sha256 here
            if resp.is_redirect:
                resp.close()
                url = urljoin(url, resp.headers.get("Location", ""))
                continue
            if resp.status_code in (200, 206):
                return resp
            resp.close()
            self._status_error(url, resp.status_code)
        raise DownloadFailed(f"too many redirects from {public_url(transfer.req.url)}")

    def _get(self, url: str, transfer: _Transfer) -> requests.Response:
        headers = {"Accept-Encoding": "identity", "User-Agent": "a1111-runpod-worker"}
        if transfer.offset > 0:
            headers["Range"] = f"bytes={transfer.offset}-"
        token = token_for(url, self.tokens)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        read_timeout = self.timeout_s
        if transfer.deadline is not None:
            read_timeout = max(0.05, min(read_timeout, transfer.deadline.remaining()))
        try:
            return self.session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(min(self.timeout_s, read_timeout), read_timeout),
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(f"{exc.__class__.__name__} contacting {urlsplit(url).netloc}") from None
        except requests.RequestException as exc:
            raise DownloadFailed(f"request to {public_url(url)} failed: {exc.__class__.__name__}") from None

    def _status_error(self, url: str, status: int) -> None:
        where = public_url(url)
        if status == 416:
            raise _Transient("server refused the resume range (416)")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status} from {urlsplit(url).netloc}")
        if status in (401, 403):
            hint = (
                "" if token_for(url, self.tokens) else " (a token may be needed: CIVITAI_TOKEN or HF_TOKEN)"
            )
            raise DownloadFailed(f"HTTP {status} (not authorised) from {where}{hint}")
        raise DownloadFailed(f"HTTP {status} from {where}", details={"status": status})

    def _check_headers(self, transfer: _Transfer, resp: requests.Response) -> None:
        req = transfer.req
        ctype = resp.headers.get("Content-Type", "").lower()
        if ctype.startswith(_TEXT_TYPES) and not req.text_expected:
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
        if transfer.file_name is None:
            name = served or unquote(urlsplit(resp.url or req.url).path.rsplit("/", 1)[-1])
            transfer.file_name = self._check_name(name, req)

    def _stream(self, transfer: _Transfer, resp: requests.Response) -> None:
        """The body to the temp file, hashed on a second thread while each chunk is written (both release the
        GIL), so hashing costs no time next to the disk."""
        mode = "ab" if transfer.offset > 0 else "wb"
        with open(transfer.part, mode) as fh, ThreadPoolExecutor(1, thread_name_prefix="sha256") as hashing:
            if fh.tell() != transfer.offset:  # never append after bytes we did not hash
                fh.truncate(transfer.offset)
                fh.seek(transfer.offset)
            flushed = transfer.offset
            while chunk := self._read(transfer, resp, fh):
                hashed = hashing.submit(transfer.hasher.update, chunk)
                try:
                    fh.write(chunk)
                finally:
                    hashed.result()
                transfer.offset += len(chunk)
                if transfer.offset - flushed >= WRITEBACK_BYTES:
                    flushed = _start_writeback(fh, flushed, transfer.offset)
                if transfer.bar is not None:
                    transfer.bar.update(len(chunk))
                if transfer.on_progress is not None:
                    transfer.on_progress(transfer.offset, transfer.total)
                if transfer.offset > self.max_bytes:
                    raise DownloadFailed(
                        f"{public_url(transfer.req.url)} exceeds WORKER_DOWNLOAD_MAX_BYTES "
                        f"({self.max_bytes} bytes)"
                    )
            fh.flush()
            os.fsync(fh.fileno())
        if transfer.total is not None and transfer.offset < transfer.total:
            raise _Transient(f"connection closed after {transfer.offset} of {transfer.total} bytes")

    def _read(self, transfer: _Transfer, resp: requests.Response, fh: Any) -> bytes:
        """The next chunk of the body (empty at its end), within the deadline."""
        self._check_deadline(transfer)
        try:
            chunk: bytes = resp.raw.read1(CHUNK_BYTES)
            return chunk
        except Exception as exc:  # urllib3 raises several types for a dropped connection
            fh.flush()
            raise _Transient(
                f"connection lost after {transfer.offset} bytes ({exc.__class__.__name__})"
            ) from None

    # ---- completion and checks -------------------------------------------------------------------

    def _finish(self, transfer: _Transfer, seconds: float) -> DownloadResult:
        req, name = transfer.req, transfer.file_name
        assert name is not None
        digest = transfer.hasher.hexdigest()
        size = transfer.offset
        if req.expected_size is not None and size != req.expected_size:
            raise DownloadFailed(f"{name}: received {size} bytes, expected {req.expected_size}")
        if transfer.expected_sha256 is not None and digest != transfer.expected_sha256:
            raise DownloadFailed(
                f"{name}: sha256 mismatch (got {digest[:12]}…, expected "
                f"{transfer.expected_sha256[:12]}…); file discarded",
                details={"sha256": digest, "expected_sha256": transfer.expected_sha256},
            )
        if name.lower().endswith(".safetensors"):
            try:
                read_header(transfer.part, file_size=size)
            except HeaderError as exc:
                raise DownloadFailed(f"{name}: not a valid safetensors file ({exc})") from None
        final = req.dest_dir / name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(transfer.part, final)
        fsync_dir(final.parent)
        log.info("downloaded %s (%d bytes, %.1fs, %d resumes)", name, size, seconds, transfer.resumed)
        verified = transfer.expected_sha256 is not None
        return DownloadResult(final, name, digest, size, seconds, transfer.resumed, verified)

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

    def _check_deadline(self, transfer: _Transfer) -> None:
        if transfer.deadline is not None and transfer.deadline.passed():
            raise DownloadFailed(f"download of {public_url(transfer.req.url)} ran past its deadline")

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


def _start_writeback(fh: Any, start: int, end: int) -> int:
    """Have the kernel start writing ``start..end`` to disk now (``POSIX_FADV_DONTNEED`` starts writeback of
    dirty pages without waiting, and drops the clean ones), so the fsync before the rename finds little left
    and a multi-GB download does not flood the page cache; returns ``end``."""
    fh.flush()
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fh.fileno(), start, end - start, os.POSIX_FADV_DONTNEED)
    return end


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m[1]) if m else None
