"""How a finished output leaves the worker: inline, or its images uploaded when asked or when too large."""

from __future__ import annotations

import logging
from typing import Any

from worker.errors import InputInvalid, OutputTooLarge
from worker.output.bucket_config import BUCKET_ENV_HINT
from worker.output.size import serialized_size
from worker.output.upload import ImageUploader
from worker.schema import OutputOptions

log = logging.getLogger(__name__)


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
