"""How a job's images leave the worker: inline base64, converted to JPEG/WebP, or uploaded to S3.

RunPod refuses a result above 20 MB (``/runsync``) and its own size tip measures the wrong thing
(``sys.getsizeof`` of the dict), so :func:`serialized_size` measures the real JSON. Above the limit
the images go to an S3 bucket through boto3 directly: ``runpod``'s ``rp_upload`` defaults to a
bucket named after the month and silently writes to a local folder when S3 is unusable, which turns
a failed upload into a "URL" nobody can fetch.

PNG output is A1111's own bytes, passed through untouched: decoding and re-encoding an image the
worker only forwards would cost tens of milliseconds per megapixel for nothing. Pillow and boto3
are imported only when an image is converted or uploaded, so importing this module (``worker.schema``
does, for :class:`OutputOptions`) costs nothing at cold start.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from worker.errors import EngineFailed, InputInvalid, OutputTooLarge, UploadFailed

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

OutputFormat = Literal["png", "jpeg", "webp"]
Delivery = Literal["auto", "inline", "url"]
AddressingStyle = Literal["path", "virtual", "auto"]

#: SigV4 presigned URLs cannot live longer than 7 days.
MAX_PRESIGN_EXPIRY_S = 604_800

BUCKET_ENV_HINT = "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY and BUCKET_NAME"

_CONTENT_TYPES: dict[str, tuple[str, str]] = {
    "png": ("png", "image/png"),
    "jpeg": ("jpg", "image/jpeg"),
    "webp": ("webp", "image/webp"),
}

# EXIF: the Exif sub-IFD pointer, its UserComment tag, and the 8-byte charset header A1111 (piexif's
# UserComment.dump(..., encoding="unicode")) writes before the UTF-16-BE text.
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
# A JPEG APP1 segment holds at most 65,535 bytes including its length and the "Exif\0\0" header.
_JPEG_EXIF_MAX = 65_527

# Strings shorter than this are sized with the C encoder; longer ones take the copy-light path.
_LONG_STRING = 4096
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class OutputOptions(BaseModel):
    """The job's ``output`` object: image format and how images are delivered."""

    model_config = ConfigDict(extra="forbid")

    format: OutputFormat = Field(
        "png", description="png passes the engine's bytes through untouched; jpeg/webp re-encode."
    )
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality (ignored for png).")
    delivery: Delivery = Field(
        "auto",
        description=(
            "auto: inline unless the output exceeds the size limit, then upload if a bucket is "
            "configured; inline: never upload; url: always upload."
        ),
    )


# ----------------------------------------------------------------------------------------------
# base64 helpers


def _decode_b64(data: Any, index: int) -> bytes:
    """Decode one engine image; anything that is not base64 is the engine's fault."""
    if not isinstance(data, str):
        raise EngineFailed(f"image {index} from the engine is a {type(data).__name__}, not a base64 string")
    if data.startswith("data:"):  # tolerate a data URL, as some A1111 forks send
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise EngineFailed(f"image {index} from the engine is not valid base64 ({len(data)} chars)") from None


def _sniff_format(raw: bytes) -> str | None:
    """The real format of ``raw``, so an upload is labelled by what it is, not what was asked."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    return None


# ----------------------------------------------------------------------------------------------
# conversion


def convert_images(
    images_b64: list[str], options: OutputOptions, warnings: list[str] | None = None
) -> list[str]:
    """Re-encode the engine's images to ``options.format``, keeping A1111's infotext.

    ``png`` returns ``images_b64`` itself: nothing is decoded. ``jpeg``/``webp`` decode with Pillow,
    drop alpha (RGBA→RGB, as A1111 does), and store the PNG ``parameters`` text in EXIF UserComment
    the way A1111 writes it, so PNG-info readers still find the generation parameters.

    Args:
        warnings: when given, a line is appended for each infotext that could not be kept.

    Raises:
        EngineFailed: an image is not base64 or not a readable image.
    """
    if options.format == "png" or not images_b64:
        return images_b64

    def one(item: tuple[int, str]) -> tuple[str, str | None]:
        return _convert_one(item[1], item[0], options.format, options.quality)

    started = time.perf_counter()
    workers = min(len(images_b64), os.cpu_count() or 1, 4)
    if workers > 1:  # Pillow releases the GIL while encoding
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert") as pool:
            results = list(pool.map(one, enumerate(images_b64)))
    else:
        results = [one(item) for item in enumerate(images_b64)]
    converted = [b64 for b64, _ in results]
    if warnings is not None:
        warnings.extend(warning for _, warning in results if warning)
    log.info(
        "converted %d image(s) to %s q%d in %.0f ms",
        len(converted),
        options.format,
        options.quality,
        (time.perf_counter() - started) * 1000,
    )
    return converted


def _convert_one(b64: str, index: int, fmt: OutputFormat, quality: int) -> tuple[str, str | None]:
    from PIL import Image

    raw = _decode_b64(b64, index)
    try:
        source = Image.open(io.BytesIO(raw))
        source.load()  # text chunks after IDAT only appear in .info once loaded
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise EngineFailed(f"image {index} from the engine is not a readable image: {exc}") from None
    with source:
        infotext = _read_infotext(source)
        image = source if source.mode == "RGB" else source.convert("RGB")
        return _encode(image, index, fmt, quality, infotext)


def _read_infotext(image: PILImage) -> str | None:
    """A1111's parameters text: the PNG ``parameters`` chunk, or an existing EXIF UserComment."""
    text = image.info.get("parameters")
    if isinstance(text, str) and text:
        return text
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(comment, bytes) and len(comment) > 8:
        body = comment[8:]
        if comment.startswith(_UNICODE_PREFIX):
            return body.decode("utf-16-be", errors="replace").rstrip("\x00") or None
        return body.decode("utf-8", errors="replace").rstrip("\x00") or None
    return None


def _exif_with_comment(infotext: str) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE_PREFIX + infotext.encode("utf-16-be", errors="replace")
    return exif.tobytes()


def _encode(
    image: PILImage, index: int, fmt: OutputFormat, quality: int, infotext: str | None
) -> tuple[str, str | None]:
    warning = None
    exif = _exif_with_comment(infotext) if infotext else b""
    if fmt == "jpeg" and len(exif) > _JPEG_EXIF_MAX:
        warning = (
            f"image {index}: its generation parameters ({len(infotext or '')} characters) do not fit "
            "in JPEG EXIF and were left out of the file; they are still in 'info'. Use output.format "
            "'webp' or 'png' to keep them in the image"
        )
        exif = b""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if fmt == "jpeg" else "WEBP", quality=quality, exif=exif)
    return base64.b64encode(buffer.getvalue()).decode("ascii"), warning


# ----------------------------------------------------------------------------------------------
# size


def serialized_size(output: Any) -> int:
    """Exact ``len(json.dumps(output).encode())`` without building the document.

    RunPod itself sends ``ensure_ascii=False`` JSON, which is never longer than this measure, so it
    is a safe upper bound. Long ASCII strings (base64 images) are sized with one C-speed pass that
    copies nothing bigger than the string itself; everything else goes through the C encoder.
    """
    if isinstance(output, str):
        return _string_size(output)
    if isinstance(output, dict):
        if not output:
            return 2
        size = 2 + 2 * (len(output) - 1)  # braces, ", " between items
        for key, value in output.items():
            size += _key_size(key) + 2 + serialized_size(value)  # ": "
        return size
    if isinstance(output, list | tuple):
        if not output:
            return 2
        return 2 + 2 * (len(output) - 1) + sum(serialized_size(item) for item in output)
    return len(json.dumps(output))  # numbers, bools, None: ASCII, one char per byte


def _key_size(key: Any) -> int:
    if isinstance(key, str):
        return _string_size(key)
    return len(json.dumps({key: 0})) - len("{: 0}")  # json's own coercion of int/float/bool keys


def _string_size(text: str) -> int:
    # isascii() is O(1) in CPython; the translate pass deletes the base64 alphabet at C speed.
    if (
        len(text) >= _LONG_STRING
        and text.isascii()
        and not text.encode("ascii").translate(None, _BASE64_ALPHABET)
    ):
        return len(text) + 2  # base64 needs no escaping
    return len(encode_basestring_ascii(text))


# ----------------------------------------------------------------------------------------------
# upload


def _safe_endpoint(url: str) -> str:
    """The endpoint for messages: user:password@ in a URL is dropped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _normalize_endpoint(url: str, bucket: str) -> str:
    """Drop a bucket-in-hostname prefix (``https://<bucket>.nyc3.digitaloceanspaces.com``) and userinfo.

    RunPod's docs show endpoints with the bucket in the hostname because ``rp_upload`` relied on
    virtual-hosted addressing; with the explicit bucket and path addressing used here, that host
    would store every key under a "<bucket>/" folder, so the bucket label is removed.
    """
    parts = urlsplit(url.rstrip("/"))
    host = parts.hostname or ""
    if parts.username or parts.password:
        log.warning("BUCKET_ENDPOINT_URL carries user:password@, which S3 ignores; it was dropped")
    if host.startswith(bucket + ".") and host.count(".") >= 2:
        host = host[len(bucket) + 1 :]
        log.info("BUCKET_ENDPOINT_URL names the bucket in its host name; using %s", host)
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ImageUploader:
    """Puts images in one explicit S3 bucket and returns presigned GET URLs.

    Works with AWS S3 and S3-compatible stores (Cloudflare R2, MinIO, Backblaze B2, DigitalOcean
    Spaces, Wasabi): SigV4 signing, path-style addressing (``<endpoint>/<bucket>/<key>``, which every
    compatible store serves and which needs no wildcard DNS or TLS certificate), checksums only when
    the operation requires them (botocore >= 1.36 adds CRC32 trailers that several compatible stores
    reject), bounded timeouts and retries. Any failure raises :class:`UploadFailed`; nothing is ever
    written to local disk instead. Note that a presigned URL carries the access key *id* (not the
    secret) in its query string, as S3 requires.
    """

    def __init__(
        self,
        *,
        endpoint_url: str,
        access_key_id: str,
        secret_access_key: str,
        bucket: str,
        region: str | None = None,
        expires_s: int = MAX_PRESIGN_EXPIRY_S,
        addressing_style: AddressingStyle = "path",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must be named")
        if not 1 <= expires_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"expires_s must be 1..{MAX_PRESIGN_EXPIRY_S} (SigV4 limit), got {expires_s}")
        self.bucket = bucket
        self.endpoint_url = _normalize_endpoint(endpoint_url, bucket)
        # R2 wants "auto", everything else accepts us-east-1; the region only enters the signature.
        self.region = region or "us-east-1"
        self.expires_s = expires_s
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._addressing_style = addressing_style
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_attempts = max_attempts
        self._client = client
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ImageUploader({self.describe()})"

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> ImageUploader | None:
        """The uploader the environment configures, or None when BUCKET_ENDPOINT_URL is unset.

        Call it once at start-up: an incomplete configuration fails the worker there, naming the
        missing variables, rather than failing the first job that needs an upload.

        Raises:
            SettingsError: BUCKET_ENDPOINT_URL is set but the bucket name or a key is missing.
        """
        from worker.settings import SettingsError

        if not settings.upload_configured or settings.bucket_endpoint_url is None:
            stray = [
                name
                for name, value in (
                    ("BUCKET_NAME", settings.bucket_name),
                    ("BUCKET_ACCESS_KEY_ID", settings.bucket_access_key_id),
                    ("BUCKET_SECRET_ACCESS_KEY", settings.bucket_secret_access_key),
                )
                if value
            ]
            if stray:
                log.warning("%s set but BUCKET_ENDPOINT_URL is empty: uploads are off", ", ".join(stray))
            return None
        key_id = settings.bucket_access_key_id.get_secret_value() if settings.bucket_access_key_id else ""
        secret = (
            settings.bucket_secret_access_key.get_secret_value() if settings.bucket_secret_access_key else ""
        )
        missing = [
            name
            for name, value in (
                ("BUCKET_NAME", settings.bucket_name),
                ("BUCKET_ACCESS_KEY_ID", key_id),
                ("BUCKET_SECRET_ACCESS_KEY", secret),
            )
            if not value
        ]
        if missing:
            raise SettingsError(
                f"BUCKET_ENDPOINT_URL is set but {', '.join(missing)} is not: uploads need "
                f"{BUCKET_ENV_HINT} (the bucket is never guessed)"
            )
        # Optional fields the settings may grow (BUCKET_REGION, BUCKET_ADDRESSING_STYLE).
        region = getattr(settings, "bucket_region", None)
        style = getattr(settings, "bucket_addressing_style", None) or "path"
        if style not in ("path", "virtual", "auto"):
            raise SettingsError(f"BUCKET_ADDRESSING_STYLE={style!r}: must be path, virtual or auto")
        return cls(
            endpoint_url=str(settings.bucket_endpoint_url),
            access_key_id=key_id,
            secret_access_key=secret,
            bucket=settings.bucket_name or "",
            region=region,
            addressing_style=cast(AddressingStyle, style),
            connect_timeout_s=settings.connect_timeout_s,
        )

    def describe(self) -> str:
        """Where uploads go, for messages: bucket and endpoint, never credentials."""
        return f"bucket {self.bucket!r} at {_safe_endpoint(self.endpoint_url)}"

    def _s3(self) -> Any:
        """The boto3 client, made on first use (importing boto3 costs ~0.3 s of cold start)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    signature_version="s3v4",
                    region_name=self.region,
                    s3={"addressing_style": self._addressing_style},
                    connect_timeout=self._connect_timeout_s,
                    read_timeout=self._read_timeout_s,
                    retries={"total_max_attempts": self._max_attempts, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    aws_access_key_id=self._access_key_id,
                    aws_secret_access_key=self._secret_access_key,
                    region_name=self.region,
                    config=config,
                )
            return self._client

    def _reason(self, exc: BaseException) -> str:
        """A one-line cause with no credentials in it."""
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            error = response["Error"]
            reason = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
        else:
            reason = f"{type(exc).__name__}: {exc}"
        for secret in (self._secret_access_key, self._access_key_id):
            if secret:
                reason = reason.replace(secret, "***")
        reason = " ".join(reason.split())
        return reason[:300]

    def upload(self, job_id: str, images_b64: Sequence[str], fmt: OutputFormat) -> list[str]:
        """Upload each image as ``<job_id>/<index>-<uuid8>.<ext>`` and return presigned GET URLs.

        The content type follows the bytes (a PNG stays image/png even if ``fmt`` says otherwise).

        Raises:
            EngineFailed: an image is not base64.
            UploadFailed: anything else went wrong; the message names the bucket and endpoint.
        """
        if not images_b64:
            return []
        bodies = [_decode_b64(b64, index) for index, b64 in enumerate(images_b64)]
        prefix = _UNSAFE_KEY_CHARS.sub("_", job_id) or "job"
        started = time.perf_counter()

        def put(index: int) -> tuple[str, str]:
            body = bodies[index]
            ext, content_type = _CONTENT_TYPES[_sniff_format(body) or fmt]
            key = f"{prefix}/{index}-{uuid.uuid4().hex[:8]}.{ext}"
            try:
                client = self._s3()
                client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
                url = client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expires_s
                )
            except Exception as exc:  # every failure, whatever its type, must surface as UploadFailed
                raise UploadFailed(
                    f"uploading image {index} to {self.describe()} failed: {self._reason(exc)}",
                    details={"bucket": self.bucket, "endpoint": _safe_endpoint(self.endpoint_url)},
                ) from None
            return key, str(url)

        results = self._run(put, len(bodies))
        log.info(
            "uploaded %d image(s), %d bytes, to %s in %.0f ms: %s",
            len(results),
            sum(len(body) for body in bodies),
            self.describe(),
            (time.perf_counter() - started) * 1000,
            ", ".join(key for key, _ in results),
        )
        return [url for _, url in results]

    @staticmethod
    def _run(put: Callable[[int], tuple[str, str]], count: int) -> list[tuple[str, str]]:
        if count == 1:
            return [put(0)]
        with ThreadPoolExecutor(max_workers=min(count, 4), thread_name_prefix="upload") as pool:
            return list(pool.map(put, range(count)))


# ----------------------------------------------------------------------------------------------
# delivery policy


def check_delivery(options: OutputOptions, uploader: ImageUploader | None) -> None:
    """Refuse ``delivery: url`` without a bucket *before* generating, not after.

    Raises:
        InputInvalid: naming the BUCKET_* variables.
    """
    if options.delivery == "url" and uploader is None:
        raise InputInvalid(
            f"output.delivery 'url' needs an S3 bucket, and none is configured: set {BUCKET_ENV_HINT} "
            "on the endpoint, or use output.delivery 'auto' or 'inline'",
            details={"field": "output.delivery"},
        )


def _too_large(size: int, max_bytes: int, options: OutputOptions, uploader: ImageUploader | None) -> str:
    fixes = []
    if uploader is None:
        fixes.append(f"set {BUCKET_ENV_HINT} so images are uploaded instead")
    elif options.delivery == "inline":
        fixes.append("use output.delivery 'auto' or 'url' to upload images to the configured bucket")
    fixes.append("lower batch_size, n_iter, width or height")
    if options.format == "png":
        fixes.append("use output.format 'jpeg' or 'webp'")
    else:
        fixes.append("lower output.quality")
    return (
        f"the output is {size:,} bytes of JSON, over the {max_bytes:,}-byte limit "
        f"(WORKER_OUTPUT_MAX_BYTES; RunPod refuses results over 20 MB): " + ", or ".join(fixes)
    )


def deliver(
    output: dict[str, Any],
    *,
    options: OutputOptions,
    job_id: str,
    max_bytes: int,
    uploader: ImageUploader | None,
) -> dict[str, Any]:
    """Apply the delivery policy to a finished output and return the dict to send.

    ``auto`` inlines when the serialized output fits ``max_bytes`` and otherwise uploads (with a
    warning saying why) if a bucket is configured; ``inline`` never uploads; ``url`` always does.
    Uploaded images leave ``images`` empty and appear in ``image_urls``. The input dict is not
    modified.

    Raises:
        InputInvalid: ``url`` without a bucket.
        OutputTooLarge: the output does not fit, naming its size, the limit and the fixes.
        UploadFailed: the upload failed (never a local fallback).
    """
    check_delivery(options, uploader)
    result = dict(output)
    images: list[str] = list(result.get("images") or [])
    reason = None
    if options.delivery != "url":
        size = serialized_size(result)
        if size <= max_bytes:
            return result
        if options.delivery == "inline" or uploader is None or not images:
            raise OutputTooLarge(
                _too_large(size, max_bytes, options, uploader),
                details={"size_bytes": size, "limit_bytes": max_bytes},
            )
        reason = (
            f"images were uploaded instead of inlined: the output would be {size:,} bytes of JSON, "
            f"over the {max_bytes:,}-byte limit"
        )
    assert uploader is not None  # check_delivery refused url without one
    result["image_urls"] = uploader.upload(job_id, images, options.format) if images else []
    result["images"] = []
    if reason:
        result["warnings"] = [*(result.get("warnings") or []), reason]
        log.warning(reason)
    size = serialized_size(result)
    if size > max_bytes:  # even without the images (an enormous info or parameters)
        raise OutputTooLarge(
            f"the output is {size:,} bytes of JSON even with its images uploaded, over the "
            f"{max_bytes:,}-byte limit (WORKER_OUTPUT_MAX_BYTES)",
            details={"size_bytes": size, "limit_bytes": max_bytes},
        )
    return result
