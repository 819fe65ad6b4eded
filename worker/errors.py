"""Typed worker errors with stable wire codes.

Every failure a job can meet is one of these classes. Only the handler turns them into RunPod's
``{"error": "<code>: <message>"}`` shape (see ``worker.handler``); everything else raises them.
``refresh_worker`` is set only for failures that leave the engine unusable: user mistakes never
restart a worker.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, ClassVar

#: the longest piece of a caller's value an error message may quote
EXCERPT_CHARS = 80


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, safe ``repr`` of a caller's value for a message: a 1 MB prompt is never echoed whole.

    Integers too long for ``repr`` (Python refuses more than 4,300 digits) are described by their size.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"<{'-' if value < 0 else ''}integer of about {digits} digits>"
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[: limit - 1] + "…" + size


class ErrorCode(str, Enum):
    """The stable error codes of the job contract (docs/api.md)."""

    INPUT_INVALID = "input_invalid"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_INCOMPATIBLE = "model_incompatible"
    DOWNLOAD_FAILED = "download_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_ERROR = "engine_error"
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    OUTPUT_TOO_LARGE = "output_too_large"
    UPLOAD_FAILED = "upload_failed"
    CANCELLED = "cancelled"
    REGISTRY_ERROR = "registry_error"


class WorkerError(Exception):
    """Base of every error a job can end with.

    Args:
        message (`str`): one line for the caller; never a traceback, never a secret.
        details (`dict`, *optional*): structured context (bad field, nearest names...) for the output.
    """

    code: ClassVar[ErrorCode] = ErrorCode.ENGINE_ERROR
    refresh_worker: ClassVar[bool] = False

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class InputInvalid(WorkerError):
    code = ErrorCode.INPUT_INVALID


class ModelNotFound(WorkerError):
    code = ErrorCode.MODEL_NOT_FOUND


class ModelIncompatible(WorkerError):
    code = ErrorCode.MODEL_INCOMPATIBLE


class DownloadFailed(WorkerError):
    code = ErrorCode.DOWNLOAD_FAILED


class EngineUnavailable(WorkerError):
    """The engine process is dead, refused or reset the connection: the worker must be replaced."""

    code = ErrorCode.ENGINE_UNAVAILABLE
    refresh_worker = True


class EngineFailed(WorkerError):
    """The engine answered, but wrongly (a 5xx, a broken body, another image than asked for), or the worker
    itself failed; wire code ``engine_error``. (The embedded engine's own HTTP refusal is
    ``diffusers_server.errors.RequestRefused``.)"""

    code = ErrorCode.ENGINE_ERROR


class OutOfMemory(WorkerError):
    """CUDA ran out of memory; fragmentation makes later jobs fail too, so the worker is replaced."""

    code = ErrorCode.OUT_OF_MEMORY
    refresh_worker = True


class JobTimeout(WorkerError):
    code = ErrorCode.TIMEOUT


class OutputTooLarge(WorkerError):
    code = ErrorCode.OUTPUT_TOO_LARGE


class UploadFailed(WorkerError):
    code = ErrorCode.UPLOAD_FAILED


class Cancelled(WorkerError):
    code = ErrorCode.CANCELLED


class RegistryError(WorkerError):
    """The model registry itself failed (its file unwritable or from a newer worker, its lock held past the
    deadline, a scan that could not read the volume, an invalid catalogue): neither the job's fault nor the
    engine's, and a new worker on the same volume would meet it too."""

    code = ErrorCode.REGISTRY_ERROR
