"""Cold start: wait for the engine, pre-load the default checkpoint, warm up, and log the timeline.

``prepare_engine(runner, settings)`` replaces the bare ``wait_until_ready`` call in ``worker.__main__``.
Every phase shares the one WORKER_READY_TIMEOUT_S deadline, so a worker that cannot become ready
exits instead of sitting billed. The timeline (engine process start → port open → checkpoint
loaded → warm-up → ready) is logged as one line so cold starts can be compared; docs/deploying.md
explains what shortens each phase.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.a1111.client import A1111Client
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineUnavailable, ModelNotFound, WorkerError
from worker.preflight.matching import match_checkpoint, nearest
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Timeline:
    """Phase marks in seconds since ``origin`` (the engine's start when its pid file tells, else ours)."""

    origin: float
    origin_label: str
    marks: list[tuple[str, float]] = field(default_factory=list)
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False, compare=False)

    @classmethod
    def begin(cls, pid_file: Path | None, clock: Clock = SYSTEM_CLOCK) -> Timeline:
        now = clock.time()
        try:
            started = pid_file.stat().st_mtime if pid_file is not None else None
        except OSError:
            started = None
        if started is not None and started <= now:
            timeline = cls(origin=started, origin_label="engine_process_start", clock=clock)
            timeline.marks.append(("worker_start", now - started))
            return timeline
        return cls(origin=now, origin_label="worker_start", clock=clock)

    def mark(self, phase: str) -> float:
        elapsed = self.clock.time() - self.origin
        self.marks.append((phase, elapsed))
        return elapsed

    @property
    def total_s(self) -> float:
        return self.marks[-1][1] if self.marks else 0.0

    def as_dict(self) -> dict[str, Any]:
        """``{"origin": ..., "phases_s": {phase: seconds since origin}}`` (for logs and job metadata)."""
        return {"origin": self.origin_label, "phases_s": {name: round(s, 2) for name, s in self.marks}}

    def summary(self) -> str:
        return " → ".join([f"{self.origin_label} 0.0s", *(f"{name} {s:.1f}s" for name, s in self.marks)])


def _engine_of(runner_or_client: Any) -> A1111Client:
    engine = getattr(runner_or_client, "engine", runner_or_client)
    if not isinstance(engine, A1111Client):
        raise TypeError(f"expected a JobRunner or an A1111Client, got {type(runner_or_client).__name__}")
    return engine


def resolve_default_checkpoint(engine: A1111Client, reference: str, provider: Any = None) -> str:
    """The engine title of WORKER_DEFAULT_CHECKPOINT (any name form; a catalogue id is pulled first)."""
    catalog = engine.catalog(refresh=True)
    found = match_checkpoint(reference, catalog.checkpoints)
    baked = provider.catalogue_file("checkpoint", reference) if found is None and provider else None
    if baked:  # a catalogue entry baked into the image: the engine lists it, nothing to download
        found = match_checkpoint(baked, catalog.checkpoints)
    if found is None and provider is not None:
        provisioned = provider.provision("checkpoint", reference)  # downloads a catalogue entry once
        if provisioned is not None:
            engine.refresh("checkpoints")
            catalog = engine.catalog(refresh=True)
            found = match_checkpoint(provisioned.facts.file_name, catalog.checkpoints)
    if found is None:
        titles = [c.title for c in catalog.checkpoints]
        close = nearest(reference, titles)
        hint = f"nearest: {', '.join(close)}" if close else f"available: {', '.join(titles[:5]) or '(none)'}"
        raise ModelNotFound(
            f"WORKER_DEFAULT_CHECKPOINT={reference!r} is not on the engine; {hint}",
            details={"reference": reference},
        )
    return found.title


def _selected(engine: A1111Client, title: str) -> bool:
    """Whether A1111's selected checkpoint is ``title`` (its options spell it with or without the hash)."""
    catalog = engine.catalog(refresh=True)
    if not catalog.current_checkpoint:
        return False
    current = match_checkpoint(catalog.current_checkpoint, catalog.checkpoints)
    return current is not None and current.title.split(" [", 1)[0] == title.split(" [", 1)[0]


def prepare_engine(
    runner_or_client: Any, settings: WorkerSettings, *, clock: Clock = SYSTEM_CLOCK
) -> Timeline:
    """Block until the engine can take jobs within ``settings.ready_timeout_s``; return the timeline.

    Raises:
        WorkerError: ``EngineUnavailable`` when the engine dies, never answers or fails to load its
            checkpoint in time; ``ModelNotFound`` when WORKER_DEFAULT_CHECKPOINT names nothing usable.
    """
    engine = _engine_of(runner_or_client)
    provider = getattr(runner_or_client, "provider", None)
    timeline = Timeline.begin(settings.engine_pid_file, clock)
    deadline = clock.monotonic() + settings.ready_timeout_s

    def remaining(phase: str) -> float:
        left = deadline - clock.monotonic()
        if left <= 0:
            raise EngineUnavailable(
                f"no time left for {phase} within the WORKER_READY_TIMEOUT_S={settings.ready_timeout_s:g} s "
                f"deadline (timeline: {timeline.summary()})"
            )
        return left

    first_wait_s = remaining("the engine to answer")
    warming = _warm_registry(provider, settings.ready_timeout_s / 2)
    try:
        engine.wait_until_ready(first_wait_s, warmup=False)
        timeline.mark("port_open")
        warmed_up = False  # whether the checkpoint jobs will use has already run a generation
        if settings.default_checkpoint:
            title = resolve_default_checkpoint(engine, settings.default_checkpoint, provider)
            # A1111 loads its configured checkpoint in a background thread, and POST /options meanwhile
            # starts a second, concurrent load that fails (seen on A1111 v1.10.1 with a 2 GB SD1.5:
            # RuntimeError in load_state_dict). A tiny txt2img waits for that load; then the checkpoint
            # is switched only if it differs.
            engine.wait_until_ready(remaining("the engine's own checkpoint load"), warmup=True)
            if _selected(engine, title):
                warmed_up = True
            else:
                engine.set_options({"sd_model_checkpoint": title}, timeout_s=remaining("the checkpoint load"))
            timeline.mark("model_loaded")
            log.info("default checkpoint %s loaded", title)
        if settings.warmup:
            if not warmed_up:
                # A tiny txt2img: blocks until the checkpoint is in memory, and pays CUDA's first-call costs.
                engine.wait_until_ready(remaining("the warm-up"), warmup=True)
            timeline.mark("warmed_up")
    except WorkerError as exc:
        timeline.mark("failed")
        log.error("start-up failed: %s (timeline: %s)", exc, timeline.summary())
        raise
    if warming is not None:
        warming.join(max(0.0, deadline - clock.monotonic()))
    timeline.mark("ready")
    log.info("start-up timeline: %s", timeline.summary(), extra={"startup": timeline.as_dict()})
    return timeline


def _warm_registry(provider: Any, deadline_s: float) -> threading.Thread | None:
    """Scan the volume while the engine boots, so jobs look models up in memory and never rescan it.

    Runs beside the engine's start-up (a thread: the scan is mostly I/O); a failure is logged, not fatal:
    the job path meets the same registry and reports its error to the job.
    """
    warm = getattr(provider, "warm", None)
    if not callable(warm):
        return None

    def run() -> None:
        try:
            scanned = warm(deadline_s=deadline_s)
        except Exception as exc:  # e.g. a registry file from a newer worker: the jobs will say so
            log.error("registry scan at start-up failed: %s", exc)
            return
        log.info("registry ready: %d model files (%d hashed now)", scanned.total, scanned.hashed)

    thread = threading.Thread(target=run, name="registry-warm", daemon=True)
    thread.start()
    return thread
