"""Logs are JSON lines with the job id; secrets and base64 never reach them."""

from __future__ import annotations

import io
import json
import logging

import pytest

from worker.logs import JsonFormatter, RedactingFilter, job_context


@pytest.fixture
def capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(["hf_supersecret"]))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_job_id_is_attached_inside_the_context(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    with job_context("job-42"):
        logger.info("inside")
    logger.info("outside")
    inside, outside = lines(stream)
    assert inside["job_id"] == "job-42" and inside["message"] == "inside"
    assert "job_id" not in outside


def test_secrets_and_base64_are_redacted(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("token %s and image %s", "hf_supersecret", "iVBORw0KGgo" + "A" * 5000)
    (line,) = lines(stream)
    assert "hf_supersecret" not in line["message"]
    assert "AAAAAAAAAA" not in line["message"]
    assert "chars of base64>" in str(line["message"])
