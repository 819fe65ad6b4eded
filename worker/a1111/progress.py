"""A1111's ``/progress`` answer reduced to what a job reports (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.errors import EngineFailed


@dataclass(frozen=True)
class GenerationProgress:
    """Where the engine's generation stands; ``active`` is True while A1111 runs a job.

    (The registry's ``Progress`` callbacks report bytes hashed or written, not generation steps.)
    """

    progress: float
    eta_relative: float
    step: int
    total: int
    active: bool
    interrupted: bool = False  # the last job's interrupted/skipped flag, kept until the next job starts


def parse_progress(data: Any) -> GenerationProgress:
    if not isinstance(data, dict):
        raise EngineFailed(f"A1111 /progress returned a {type(data).__name__}, not an object")
    state = data.get("state") or {}
    if not isinstance(state, dict):
        state = {}
    progress = float(data.get("progress") or 0.0)
    job_count = int(state.get("job_count") or 0)
    return GenerationProgress(
        progress=progress,
        eta_relative=float(data.get("eta_relative") or 0.0),
        step=int(state.get("sampling_step") or 0),
        total=int(state.get("sampling_steps") or 0),
        active=job_count != 0 or progress > 0,
        interrupted=bool(state.get("interrupted") or state.get("skipped")),
    )
