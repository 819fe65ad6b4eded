"""The engine's generation state (A1111's ``shared.state``) on an injected clock: ``/progress``'s numbers."""

from __future__ import annotations

from datetime import datetime

import pytest

from diffusers_server.state import GenerationState
from tests.support.clock import FakeClock


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
