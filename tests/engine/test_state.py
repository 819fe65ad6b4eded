"""The engine's generation state (A1111's ``shared.state``) on an injected clock: ``/progress``'s numbers; and
its FIFO generation lock, whose waiters may give up (``--queue-timeout``)."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import datetime
from pathlib import Path

import pytest
import requests

from diffusers_server.state import FifoLock, GenerationState, QueueTimeout
from tests.support.clock import FakeClock
from tests.support.polling import poll_until


def test_progress_and_eta_come_from_the_steps_done_and_the_injected_clock() -> None:
    clock = FakeClock(start=100.0, wall=1_700_000_000.0)
    state = GenerationState(clock)
    assert state.progress()["progress"] == 0 and state.progress()["eta_relative"] == 0

    state.begin("txt2img", job_count=2)
    assert state.job_timestamp == datetime.fromtimestamp(1_700_000_000.0).strftime("%Y%m%d%H%M%S")
    state.sampling_steps, state.sampling_step = 10, 5  # half of the first of two jobs
    clock.advance(3.0)
    progress = state.progress()
    assert progress["progress"] == 0.25
    assert progress["eta_relative"] == pytest.approx(9.0)  # a quarter took 3 s: 9 s to go
    assert progress["state"]["job_count"] == 2 and progress["state"]["sampling_step"] == 5

    state.job_no, state.sampling_step = 1, 10
    clock.advance(5.0)
    assert state.progress()["progress"] == 1.0 and state.progress()["eta_relative"] == 0

    state.end()
    assert state.progress()["progress"] == 0 and state.as_dict()["job"] == ""


def test_a_new_job_clears_interrupt_and_skip() -> None:
    state = GenerationState(FakeClock())
    state.interrupt()
    state.skip()
    assert state.as_dict()["interrupted"] and state.as_dict()["skipped"]
    state.begin("txt2img", job_count=1)
    assert not state.interrupted and not state.skipped


def test_a_waiter_that_gives_up_loses_its_turn_and_the_next_one_is_served() -> None:
    lock = FifoLock()
    lock.acquire()  # a running generation
    with pytest.raises(QueueTimeout, match=r"1 request\(s\) still ahead after 0.05 s"):
        lock.acquire(timeout_s=0.05)
    served = threading.Event()

    def next_request() -> None:
        with lock.hold(timeout_s=10):
            served.set()

    waiter = threading.Thread(target=next_request)
    waiter.start()
    assert not served.wait(0.1), "served while the lock was held"
    lock.release()
    # the abandoned turn is skipped; without that, this waiter would wait for a request that is gone
    assert served.wait(10), "the request after an abandoned turn was never served"
    waiter.join(10)


def _generating(url: str) -> bool | None:
    state = requests.get(f"{url}/sdapi/v1/progress", timeout=10).json()["state"]
    return True if state["job_count"] > 0 else None


def test_a_queued_txt2img_past_the_queue_timeout_is_a_503_naming_the_flag(tmp_path: Path) -> None:
    from diffusers_server.demo_models import make_demo_models
    from tests.support.embedded_engine import run_engine

    make_demo_models(tmp_path / "models")
    slow = {"prompt": "a lighthouse", "steps": 150, "width": 256, "height": 256}
    with (
        run_engine(tmp_path / "models", tmp_path / "engine.log", "--queue-timeout", "0.5") as engine,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        running = pool.submit(requests.post, f"{engine.url}/sdapi/v1/txt2img", json=slow, timeout=300)
        poll_until(lambda: _generating(engine.url), "the first txt2img to start", timeout_s=60)
        queued = requests.post(f"{engine.url}/sdapi/v1/txt2img", json={**slow, "steps": 1}, timeout=60)
        requests.post(f"{engine.url}/sdapi/v1/interrupt", timeout=10)
        assert running.result().status_code == 200
    assert queued.status_code == 503, queued.text
    assert "busy" in queued.json()["detail"] and "--queue-timeout" in queued.json()["detail"]
