"""The upload bucket from the environment (``BUCKET_*``): validated once at start-up, never guessed.

RunPod's ``rp_upload`` defaults to a bucket named after the month and silently writes to a local folder when
S3 is unusable; here an incomplete configuration fails the worker at start, naming the missing variables.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit, urlunsplit

from worker.redaction import public_url

if TYPE_CHECKING:
    from worker.output.upload import AddressingStyle, ImageUploader
    from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

BUCKET_ENV_HINT = "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY and BUCKET_NAME"


def bucket_endpoint(url: str, bucket: str) -> str:
    """The endpoint to sign against: ``user:password@`` dropped, and a bucket-in-hostname prefix too.

    RunPod's docs show endpoints with the bucket in the host name (``https://<bucket>.nyc3.digitaloceanspaces
    .com``) because ``rp_upload`` relied on virtual-hosted addressing; with the explicit bucket and path
    addressing used here, that host would store every key under a "<bucket>/" folder.
    """
    parts = urlsplit(url.rstrip("/"))
    if parts.username or parts.password:
        log.warning("BUCKET_ENDPOINT_URL carries user:password@, which S3 ignores; it was dropped")
    host = parts.hostname or ""
    if host.startswith(bucket + ".") and host.count(".") >= 2:
        host = host[len(bucket) + 1 :]
        log.info("BUCKET_ENDPOINT_URL names the bucket in its host name; using %s", host)
    netloc = host + (f":{parts.port}" if parts.port else "")
    return public_url(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def _warn_stray(settings: WorkerSettings) -> None:
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


def uploader_from_settings(settings: WorkerSettings) -> ImageUploader | None:
    """The uploader the environment configures, or None when BUCKET_ENDPOINT_URL is unset.

    Raises:
        SettingsError: BUCKET_ENDPOINT_URL is set but the bucket name or a key is missing.
    """
    from worker.output.upload import ImageUploader
    from worker.settings import SettingsError

    if not settings.upload_configured or settings.bucket_endpoint_url is None:
        _warn_stray(settings)
        return None
    key_id = settings.bucket_access_key_id.get_secret_value() if settings.bucket_access_key_id else ""
    secret = settings.bucket_secret_access_key.get_secret_value() if settings.bucket_secret_access_key else ""
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
    bucket = settings.bucket_name or ""
    return ImageUploader(
        endpoint_url=str(settings.bucket_endpoint_url),
        access_key_id=key_id,
        secret_access_key=secret,
        bucket=bucket,
        region=region,
        addressing_style=cast("AddressingStyle", style),
        connect_timeout_s=settings.connect_timeout_s,
    )
