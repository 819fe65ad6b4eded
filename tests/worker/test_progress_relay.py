"""``worker.progress_relay.ProgressRelay`` driven tick by tick through the injected clock, against the fake A1111."""

from __future__ import annotations

from typing import Any

from tests.support.clock import FakeClock
from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.progress_relay import ProgressRelay


def state(progress: float, step: int, steps: int, eta: float = 1.0) -> dict[str, Any]:
    return {
        "progress": progress,
        "eta_relative": eta,
        "state": {"job_count": 1, "sampling_step": step, "sampling_steps": steps},
    }


def relay_ticks(fake: FakeA1111, ticks: int) -> tuple[list[dict[str, Any]], FakeClock]:
    """Run a relay for ``ticks`` intervals of 1 s of the fake clock; the updates it sent."""
    clock = FakeClock()
    updates: list[dict[str, Any]] = []
    with A1111Client(fake.url, request_timeout_s=5) as client:
        relay = ProgressRelay(client, updates.append, interval_s=1.0, job_id="j", clock=clock)
        with relay:
            for tick in range(1, ticks + 1):
                clock.wait_for_waits(tick)
                clock.advance(1.0)
            clock.wait_for_waits(ticks + 1)  # the last poll has been handled
    return updates, clock


def test_one_poll_per_interval_and_only_changes_are_sent(fake_a1111: FakeA1111) -> None:
    fake_a1111.progress_script = [state(0.25, 5, 20), state(0.25, 5, 20), state(0.5, 10, 20, eta=0.5)]
    updates, _ = relay_ticks(fake_a1111, 3)
    assert len(fake_a1111.requests_to("progress")) == 3  # one poll per tick, none in between
    assert updates == [
        {"progress": 0.25, "step": 5, "total": 20, "eta_s": 1.0},
        {"progress": 0.5, "step": 10, "total": 20, "eta_s": 0.5},
    ]


def test_progress_before_the_first_step_is_not_relayed(fake_a1111: FakeA1111) -> None:
    """Until sampling starts A1111 reports the previous job's step count (seen on the real A1111)."""
    stale = state(0.01, 0, 3, eta=9.0)
    fake_a1111.progress_script = [stale, stale, state(0.2, 2, 30)]
    updates, _ = relay_ticks(fake_a1111, 3)
    assert updates == [{"progress": 0.2, "step": 2, "total": 30, "eta_s": 1.0}]


def test_a_failed_poll_is_skipped_not_fatal(fake_a1111: FakeA1111) -> None:
    fake_a1111.progress_script = [state(0.5, 10, 20)]
    fake_a1111.fail_times("progress", 1, status=500, body={"detail": "boom"})
    updates, _ = relay_ticks(fake_a1111, 2)
    assert updates == [{"progress": 0.5, "step": 10, "total": 20, "eta_s": 1.0}]
