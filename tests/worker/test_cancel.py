"""Cancelling a job (RunPod cancels the handler's asyncio task) interrupts the engine."""

from __future__ import annotations

import asyncio

from tests.support.fake_a1111 import FakeA1111
from worker import handler as handler_module
from worker.a1111.client import A1111Client
from worker.handler import JobRunner, async_handler, set_runner
from worker.settings import WorkerSettings


def test_cancelled_job_interrupts_the_engine(fake_a1111: FakeA1111) -> None:
    fake_a1111.txt2img_delay = 5.0  # a long generation that only an interrupt ends early
    settings = WorkerSettings.model_validate({"a1111_url": fake_a1111.url, "job_timeout_s": 30})
    set_runner(JobRunner(settings, A1111Client(fake_a1111.url)))

    async def cancel_midway() -> None:
        task = asyncio.create_task(async_handler({"id": "c1", "input": {"prompt": "a"}}))
        while not fake_a1111.requests_to("txt2img", "POST"):
            await asyncio.sleep(0.02)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("the task was not cancelled")

    try:
        asyncio.run(asyncio.wait_for(cancel_midway(), timeout=20))
    finally:
        handler_module._runner = None
    assert fake_a1111.requests_to("interrupt", "POST"), "cancellation must interrupt the engine"
