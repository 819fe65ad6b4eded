"""The RunPod handler: the only module that knows RunPod's job dict and its error conventions.

``handler(job)`` is the contract entry point (``{"id": ..., "input": {...}}`` in, a dict out).
One job runs in numbered stages (see ``JobRunner.run``); every failure is a ``WorkerError`` turned
into ``{"error": "<code>: <message>"}`` here and nowhere else, with ``refresh_worker`` only when the
engine is unusable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from worker.a1111.client import A1111Client
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineFailed, WorkerError
from worker.face_restoration import check_face_restoration
from worker.image_jobs import ImageToolRequest, Img2ImgJob, parse_any_job
from worker.image_tools import check_interrogation, resolve_upscalers, run_tool
from worker.input_images.prepare import ImagePolicy, InputImages
from worker.input_images.script_images import check_script_images
from worker.logs import job_context
from worker.model_job_types import ModelJobRequest, ModelJobs
from worker.model_jobs import run_model_job
from worker.model_types import ModelProvider
from worker.output.bucket_config import uploader_from_settings
from worker.output.delivery import check_delivery, deliver
from worker.output.echo import trim_echoed_images
from worker.output.images import convert_images
from worker.output.upload import ImageUploader
from worker.preflight.resolver import Preflight
from worker.progress_relay import ProgressRelay
from worker.schema import GenerationRequest, ListingRequest, OutputOptions, Txt2ImgJob
from worker.settings import WorkerSettings
from worker.settings_baseline import SettingsBaseline
from worker.translate import ResolvedNames, Translation, build_txt2img_payload
from worker.translate_img2img import build_img2img_payload
from worker.verify import check_generation, check_not_interrupted

log = logging.getLogger(__name__)

ProgressSink = Callable[[dict[str, Any], dict[str, Any]], None]


def error_output(error: WorkerError) -> dict[str, Any]:
    """The wire shape of a failed job: RunPod pops ``error`` and ``refresh_worker``."""
    output: dict[str, Any] = {"error": str(error)}
    if error.refresh_worker:
        output["refresh_worker"] = True
    return output


class JobRunner:
    """Runs jobs against one engine; built once per process (see ``worker.__main__``)."""

    def __init__(
        self,
        settings: WorkerSettings,
        engine: A1111Client,
        *,
        provider: ModelProvider | None = None,
        uploader: ImageUploader | None = None,
        progress_sink: ProgressSink | None = None,
        clock: Clock = SYSTEM_CLOCK,
        model_jobs: ModelJobs | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = engine
        self.provider = provider
        self.uploader = uploader
        self.progress_sink = progress_sink
        self.images = InputImages(ImagePolicy.from_settings(settings))
        self.model_jobs = model_jobs
        #: set when RunPod cancels the running job: a registry job stops at its next chunk
        self.cancelled = threading.Event()
        self._baseline: SettingsBaseline | None = None
        self._baseline_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> JobRunner:
        from worker.registry import ModelRegistry
        from worker.registry.jobs import RegistryJobs

        sink: ProgressSink | None = None
        if settings.deployed_on_runpod:
            import runpod

            sink = runpod.serverless.progress_update
        registry = ModelRegistry.from_settings(settings)
        return cls(
            settings,
            A1111Client.from_settings(settings),
            provider=registry,
            uploader=uploader_from_settings(settings),
            progress_sink=sink,
            # registry jobs go through the same registry (its locks, quota and caches) behind ModelJobs
            model_jobs=RegistryJobs(
                registry, engine=_engine_kind(settings), interval_s=settings.progress_interval_s
            ),
        )

    def run(self, job: dict[str, Any]) -> dict[str, Any] | list[Any]:
        job_id = str(job.get("id") or "local")
        with job_context(job_id):
            started = time.perf_counter()
            self.cancelled.clear()
            try:
                result = self._run(job, job_id, started)
            except WorkerError as exc:
                log.warning("job failed: %s", exc)
                return error_output(exc)
            except Exception as exc:  # a bug: keep the traceback in the logs, not in the response
                log.exception("job crashed")
                return error_output(EngineFailed(f"unexpected worker failure ({type(exc).__name__})"))
            log.info("job done in %.0f ms", (time.perf_counter() - started) * 1000)
            return result

    def _run(self, job: dict[str, Any], job_id: str, started: float) -> dict[str, Any] | list[Any]:
        timings: dict[str, float] = {}

        # 1. Validate the input and tell its form.
        request = parse_any_job(job.get("input"), max_images=self.settings.max_images_per_job)
        if isinstance(request, ListingRequest):
            result: dict[str, Any] | list[Any] = self.engine.call_listing(request.endpoint)
            return result
        if isinstance(request, ImageToolRequest):
            return self._run_tool(request, job_id)
        if isinstance(request, ModelJobRequest):
            return self._model_job(request, job)
        assert isinstance(request, GenerationRequest)
        job_input = request.job
        check_delivery(job_input.output, self.uploader)
        image_warnings: list[str] = []
        if isinstance(job_input, Img2ImgJob):  # every image checked before anything is resolved or generated
            job_input, image_warnings = self.images.img2img(job_input)
        job_input = check_script_images(job_input, self.images.read)  # ControlNet's images, checked alike
        mark = _stopwatch(timings, "validate", started)

        # 2. Resolve every name against the engine's lists; provision what is missing.
        preflight = Preflight(
            self.engine,
            self.provider,
            engine_kind=_engine_kind(self.settings),
            clock=self.clock,
            models_dir=self.settings.models_dir,
        ).resolve(job_input)
        timings["provision"] = round(preflight.provision_ms, 1)
        if _engine_kind(self.settings) != "embedded":  # the embedded engine refuses restore_faces itself
            options = self.engine.catalog().options
            check_face_restoration(
                job_input.restore_faces, job_input.override_settings, options, self.settings.models_dir
            )
        mark("preflight", subtract=preflight.provision_ms)

        # 3. Translate (pure), every managed engine setting included, and generate, relaying progress.
        baseline = self._settings_baseline()
        translation = _translate(job_input, preflight.names, baseline.defaults())
        baseline.track(translation.payload.get("override_settings") or {})
        generate = self.engine.img2img if isinstance(job_input, Img2ImgJob) else self.engine.txt2img
        interrupts_before = self.engine.interrupts_sent
        with self._progress(job):
            response = generate(translation.payload, timeout_s=self.settings.job_timeout_s)
        mark("generate")

        # 4. Check what the engine really did (worker.verify), then shape and deliver the output.
        info = _parse_info(response.get("info"))
        images = list(response.get("images") or [])
        # A1111 shows an interrupt only in /progress: asked unless only the worker can interrupt, and did not
        ask = not self.settings.engine_private or self.engine.interrupts_sent != interrupts_before
        check_not_interrupted(info, self.engine.progress() if ask else None)
        verify_warnings = check_generation(translation.payload, self.engine.catalog(), images, info)
        mark("verify")
        engine_warnings = info.get("warnings")
        engine_warnings = engine_warnings if isinstance(engine_warnings, list) else []
        warnings = [
            *image_warnings,
            *preflight.warnings,
            *translation.warnings,
            *verify_warnings,
            *(f"engine: {w}" for w in engine_warnings),
        ]
        output: dict[str, Any] = {
            "images": convert_images(images, job_input.output, warnings),
            "parameters": trim_echoed_images(response.get("parameters", {})),  # control images out
            "info": response.get("info", ""),
            "seeds": info.get("all_seeds") or ([info["seed"]] if "seed" in info else []),
            "models": preflight.models,
            "timings_ms": timings,
            "warnings": warnings,
        }
        self._record_use(preflight.names.checkpoint_title, [name for name, _ in preflight.names.loras])
        mark("encode")
        timings["total"] = round((time.perf_counter() - started) * 1000, 1)
        return self._deliver(output, job_input.output, job_id)

    def _run_tool(self, request: ImageToolRequest, job_id: str) -> dict[str, Any]:
        """Extras, png-info or interrogate (``worker.image_tools``): images and names checked, one call."""
        check_delivery(request.output, self.uploader)
        if request.endpoint == "interrogate":
            check_interrogation(
                request.body, self.settings.models_dir, engine_kind=_engine_kind(self.settings)
            )
        embedded = _engine_kind(self.settings) == "embedded"
        request = resolve_upscalers(self.images.tool(request), self.engine, self.provider, embedded=embedded)
        output = run_tool(request, self.engine, timeout_s=self.settings.job_timeout_s)
        return self._deliver(output, request.output, job_id)

    def _deliver(self, output: dict[str, Any], options: OutputOptions, job_id: str) -> dict[str, Any]:
        return deliver(
            output,
            options=options,
            job_id=job_id,
            max_bytes=self.settings.output_max_bytes,
            uploader=self.uploader,
        )

    def _model_job(self, request: ModelJobRequest, job: dict[str, Any]) -> dict[str, Any]:
        """A registry job (``worker.model_jobs``): its progress goes to RunPod like a generation's."""
        sink = self.progress_sink

        def report(update: dict[str, Any]) -> None:
            if sink is not None:
                sink(job, update)

        return run_model_job(
            request,
            self.model_jobs,
            self.engine,
            allowed=self.settings.allow_model_jobs,
            report=report,
            cancelled=self.cancelled.is_set,
            secrets=self.settings.secret_values(),
            models_dir=self.settings.models_dir,
        )

    def _settings_baseline(self) -> SettingsBaseline:
        """The engine's settings as the first job found them (``worker.settings_baseline``)."""
        with self._baseline_lock:
            if self._baseline is None:
                self._baseline = SettingsBaseline(self.engine.catalog().options)
            return self._baseline

    def _progress(self, job: dict[str, Any]) -> ProgressRelay:
        sink = self.progress_sink

        def send(update: dict[str, Any]) -> None:
            if sink is not None:
                sink(job, update)

        return ProgressRelay(
            self.engine,
            send,
            interval_s=self.settings.progress_interval_s,
            job_id=str(job.get("id") or "local"),
            clock=self.clock,
        )

    def _record_use(self, checkpoint_title: str | None, loras: list[str]) -> None:
        if self.provider is None:
            return
        try:
            if checkpoint_title:
                self.provider.record_use("checkpoint", checkpoint_title.split(" [", 1)[0])
            for name in loras:
                self.provider.record_use("lora", name)
        except Exception:  # bookkeeping must never fail a finished job
            log.warning("could not record model use in the registry", exc_info=True)


def _translate(job: Txt2ImgJob, names: ResolvedNames, defaults: Mapping[str, Any]) -> Translation:
    if isinstance(job, Img2ImgJob):
        return build_img2img_payload(job, names, defaults)
    return build_txt2img_payload(job, names, defaults)


def _engine_kind(settings: WorkerSettings) -> str:
    """``embedded`` or ``a1111`` (an external or unknown engine is held to A1111's rules)."""
    return "embedded" if settings.engine == "embedded" else "a1111"


def _stopwatch(timings: dict[str, float], first: str, started: float) -> Callable[..., None]:
    """Records each stage's wall time in ms, measured from the end of the previous stage."""
    last = [time.perf_counter()]
    timings[first] = round((last[0] - started) * 1000, 1)

    def mark(stage: str, subtract: float = 0.0) -> None:
        now = time.perf_counter()
        timings[stage] = round((now - last[0]) * 1000 - subtract, 1)
        last[0] = now

    return mark


def _parse_info(info: Any) -> dict[str, Any]:
    if isinstance(info, dict):
        return info
    if isinstance(info, str) and info:
        try:
            parsed = json.loads(info)
        except ValueError as exc:
            raise EngineFailed(f"engine returned an info field that is not JSON: {info[:120]!r}") from exc
        return parsed if isinstance(parsed, dict) else {}
    return {}


# --- the RunPod entry points --------------------------------------------------------------------

_runner: JobRunner | None = None


def set_runner(runner: JobRunner) -> None:
    """Install the process's runner (``worker.__main__`` does this after the engine is ready)."""
    global _runner
    _runner = runner


def _get_runner() -> JobRunner:
    global _runner
    if _runner is None:
        _runner = JobRunner.from_settings(WorkerSettings.from_env())
    return _runner


def handler(job: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """RunPod handler: ``{"id", "input"}`` → output dict, or ``{"error": "<code>: <message>"}``."""
    return _get_runner().run(job)


async def async_handler(job: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """What ``python -m worker`` registers: a cancelled or timed-out job also stops the engine.

    RunPod cancels a job by cancelling its asyncio task, which only lands at an ``await``; the sync
    handler runs in a thread so that the cancellation can reach us and interrupt A1111.
    """
    runner = _get_runner()
    try:
        return await asyncio.to_thread(runner.run, job)
    except asyncio.CancelledError:
        with job_context(str(job.get("id"))):
            log.warning("job cancelled: interrupting the engine")
            runner.cancelled.set()
            runner.engine.interrupt()
        raise
