"""Structured logging: one JSON object per line, the job id attached, secrets and base64 redacted.

``setup_logging`` is called once by ``worker.__main__``; library code only does
``logging.getLogger(__name__)``. The job id travels in a context variable set by the handler, so
every line logged while a job runs carries it without being passed around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from worker.redaction import mask_secrets, redact_base64

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Attach ``job_id`` to every log record emitted inside the block."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


class RedactingFilter(logging.Filter):
    """Adds ``job_id`` to records and removes secrets and base64 payloads from messages."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def redact(self, text: str) -> str:
        return redact_base64(mask_secrets(text, self._secrets))

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = job_id_var.get()
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the shape RunPod's log viewer and jq both read."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once: stdout, one format, quiet HTTP libraries."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(job_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "botocore", "boto3", "s3transfer", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def settings_with_logging() -> WorkerSettings | None:
    """A process's start: settings from the environment, then logging configured from them.

    Returns None (after logging why) when the environment is invalid, so entry points exit with 2.
    """
    from worker.settings import SettingsError, WorkerSettings

    try:
        settings = WorkerSettings.from_env()
    except SettingsError as exc:
        logging.basicConfig(level=logging.ERROR)
        logging.getLogger("worker").error("%s", exc)
        return None
    setup_logging(settings.log_level, settings.log_format, settings.secret_values())
    return settings
