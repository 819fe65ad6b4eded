"""Images to one explicit S3 bucket through boto3, returned as presigned GET URLs.

Any failure raises ``UploadFailed``; nothing is ever written to local disk instead (RunPod's ``rp_upload``
silently does, which turns a failed upload into a "URL" nobody can fetch). boto3 is imported on first use
(~0.3 s of cold start a job without uploads never pays).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import UploadFailed
from worker.output.bucket_config import bucket_endpoint
from worker.output.images import decode_image, sniff_format
from worker.output.threads import map_in_threads
from worker.redaction import mask_secrets, public_url
from worker.schema import OutputFormat

log = logging.getLogger(__name__)

AddressingStyle = Literal["path", "virtual", "auto"]

#: SigV4 presigned URLs cannot live longer than 7 days.
MAX_PRESIGN_EXPIRY_S = 604_800

_CONTENT_TYPES: dict[str, tuple[str, str]] = {
    "png": ("png", "image/png"),
    "jpeg": ("jpg", "image/jpeg"),
    "webp": ("webp", "image/webp"),
}
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must be named")
        if not 1 <= expires_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"expires_s must be 1..{MAX_PRESIGN_EXPIRY_S} (SigV4 limit), got {expires_s}")
        self.bucket = bucket
        self.endpoint_url = bucket_endpoint(endpoint_url, bucket)
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
        self._clock = clock
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ImageUploader({self.describe()})"

    def describe(self) -> str:
        """Where uploads go, for messages: bucket and endpoint, never credentials."""
        return f"bucket {self.bucket!r} at {public_url(self.endpoint_url)}"

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
        reason = mask_secrets(reason, (self._secret_access_key, self._access_key_id))
        return " ".join(reason.split())[:300]

    def upload(self, job_id: str, images_b64: Sequence[str], fmt: OutputFormat) -> list[str]:
        """Upload each image as ``<job_id>/<index>-<uuid8>.<ext>`` and return presigned GET URLs.

        The content type follows the bytes (a PNG stays image/png even if ``fmt`` says otherwise).

        Raises:
            EngineFailed: an image is not base64.
            UploadFailed: anything else went wrong; the message names the bucket and endpoint.
        """
        if not images_b64:
            return []
        bodies = [decode_image(b64, index) for index, b64 in enumerate(images_b64)]
        prefix = _UNSAFE_KEY_CHARS.sub("_", job_id) or "job"
        started = self._clock.monotonic()

        def put(index: int) -> tuple[str, str]:
            body = bodies[index]
            ext, content_type = _CONTENT_TYPES[sniff_format(body) or fmt]
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
                    details={"bucket": self.bucket, "endpoint": public_url(self.endpoint_url)},
                ) from None
            return key, str(url)

        results = map_in_threads(put, range(len(bodies)), max_workers=4)
        log.info(
            "uploaded %d image(s), %d bytes, to %s in %.0f ms: %s",
            len(results),
            sum(len(body) for body in bodies),
            self.describe(),
            (self._clock.monotonic() - started) * 1000,
            ", ".join(key for key, _ in results),
        )
        return [url for _, url in results]
