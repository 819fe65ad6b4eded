"""The engine: the model folders, the loaded model, the options and the FIFO lock that serialises generation.

Each job has its own module; this one composes them and owns what they share:
:mod:`.inventory` (folders), :mod:`.model_slot` (the loaded pipeline), :mod:`.options` (A1111's options),
:mod:`.validation` (a request checked before the lock), :mod:`.generation` (the locked txt2img).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from worker.clock import SYSTEM_CLOCK, Clock

from . import extras, image_ops, options
from .config import ServerConfig
from .errors import ModelLoadError, RequestRefused
from .inventory import ModelInventory
from .model_slot import ModelSlot
from .models.files import CheckpointInfo, HashCache
from .schemas import ExtrasRequest, Img2ImgRequest, Txt2ImgRequest
from .state import FifoLock, GenerationState, QueueTimeout
from .validation import PreparedRequest, RequestValidator

if TYPE_CHECKING:  # torch and diffusers: imported by the first model load, not by the server's start
    import torch

    from .generation import GenerationContext, Txt2ImgRun
    from .models.pipelines import LoadedModel, Runtime

log = logging.getLogger(__name__)


class Engine:
    """Owns the model folders, the loaded pipeline and the options; a FIFO lock serialises generation."""

    def __init__(self, config: ServerConfig, clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.inventory = ModelInventory(config, HashCache(config.hash_cache))
        self.slot = ModelSlot(
            self.inventory, config.clip_tokenizer, force_cpu=config.force_cpu, threads=config.threads
        )
        self.lock = FifoLock()
        self.state = GenerationState(clock)
        self.options: dict[str, Any] = dict(options.DEFAULTS)
        self.validator = RequestValidator(self.inventory, lambda: self.options, lambda: self.slot.info)
        self._global_rng: torch.Generator | None = None
        self.inventory.refresh_all()

    @property
    def runtime(self) -> Runtime:
        return self.slot.runtime

    @property
    def global_rng(self) -> torch.Generator:
        """A1111's global CPU generator, kept across requests; made on first use (it needs torch)."""
        if self._global_rng is None:
            from .sampling.noise import global_generator

            self._global_rng = global_generator()
        return self._global_rng

    # The loaded model as the health probe (``worker.health.probe_embedded``) reads it.
    @property
    def model(self) -> LoadedModel | None:
        return self.slot.model

    @property
    def model_info(self) -> CheckpointInfo | None:
        return self.slot.info

    @property
    def load_error(self) -> str | None:
        return self.slot.load_error

    # ---- model loading ----

    def load_default(self) -> None:
        """Load the configured (or first) checkpoint; runs in a background thread at start, like A1111."""
        with self.lock.hold():
            try:
                if not self.inventory.checkpoints:
                    raise RequestRefused(503, f"no checkpoints in {self.config.checkpoints}")
                wanted = self.config.ckpt or self.inventory.checkpoints[0].title
                info = self.inventory.find_checkpoint(wanted)
                self.inventory.parse_embeddings()  # here (torch), not while the server starts
                self.slot.ensure(info, str(self.options["sd_vae"]))
                self.options["sd_model_checkpoint"] = info.title
            except (RequestRefused, ModelLoadError) as exc:
                self.slot.load_error = str(exc)
                log.error("initial model load failed: %s", exc)

    # ---- options ----

    def get_options(self) -> dict[str, Any]:
        return dict(self.options)

    def set_options(self, values: dict[str, Any]) -> list[str]:
        """``POST /options``: validated; a checkpoint/VAE change loads at once (waiting for running jobs)."""
        try:
            notes = options.validate(values)
        except options.OptionError as exc:
            raise RequestRefused(400, str(exc)) from exc
        with self.lock.hold():
            ckpt = values.get("sd_model_checkpoint")
            info = self.inventory.find_checkpoint(str(ckpt)) if ckpt is not None else self.slot.info
            vae = str(values.get("sd_vae", self.options["sd_vae"]))
            self.inventory.vae_path(vae)
            if info is not None:
                self.slot.ensure_for_request(info, vae)
            self.options.update(values)
            if info is not None:
                self.options["sd_model_checkpoint"] = info.title
        for note in notes:
            log.info("POST /options: %s", note)
        return notes

    # ---- txt2img ----

    def prepare(self, req: Txt2ImgRequest) -> PreparedRequest:
        """Validate before taking the lock; 4xx for anything this engine cannot honour."""
        return self.validator.prepare(req)

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The lock, within ``--queue-timeout``: a caller that stopped waiting is not served later."""
        try:
            self.lock.acquire(self.config.queue_timeout_s)
        except QueueTimeout as exc:
            raise RequestRefused(503, f"the engine is busy: {exc} (--queue-timeout)") from exc
        try:
            yield
        finally:
            self.lock.release()

    def txt2img(self, req: Txt2ImgRequest) -> dict[str, Any]:
        from .generation import Txt2ImgRun

        prepared = self.prepare(req)
        # Like A1111, hires counts two jobs per batch (first pass, second pass).
        return self._locked("txt2img", prepared, 2 if prepared.hires else 1, Txt2ImgRun)

    def img2img(self, req: Img2ImgRequest) -> dict[str, Any]:
        from . import img2img

        prepared = self.prepare(req)
        plan = img2img.plan(req)
        prepared.warnings += plan.warnings

        def make_run(prepared: PreparedRequest, context: GenerationContext) -> Txt2ImgRun:
            return img2img.Img2ImgRun(prepared, context, plan, req)

        return self._locked("img2img", prepared, 1, make_run)

    # ---- extras ----

    def extras(self, req: ExtrasRequest, encoded: list[tuple[str, str]]) -> tuple[list[str], str]:
        """``/extra-*``: each (field, base64) image upscaled, in the queue as in A1111; the encoded results
        and the last one's infotext as A1111's ``html_info``."""
        extras.check(req)
        decoded = [image_ops.decode_image(data, field) for field, data in encoded]
        results, text = [], ""
        with self._turn():
            for image in decoded:
                result, text = extras.process(image, req)
                results.append(extras.encode(result, text, self.options))
        return results, extras.html_info(text)

    def _locked(
        self,
        job: str,
        prepared: PreparedRequest,
        jobs_per_batch: int,
        make_run: Callable[[PreparedRequest, GenerationContext], Txt2ImgRun],
    ) -> dict[str, Any]:
        """A prepared request's turn: its overrides applied (and put back), the state begun and ended."""
        req = prepared.req
        for warning in prepared.warnings:
            log.warning("%s: %s", job, warning)
        with self._turn():
            saved = {k: self.options[k] for k in prepared.overrides}
            self.state.begin(job, int(req.n_iter or 1) * jobs_per_batch)
            try:
                self.options.update(prepared.overrides)
                return self._generate(prepared, make_run)
            finally:
                self.state.end()
                if req.override_settings_restore_afterwards is not False:
                    self.options.update(saved)

    def _generate(
        self, prepared: PreparedRequest, make_run: Callable[[PreparedRequest, GenerationContext], Txt2ImgRun]
    ) -> dict[str, Any]:
        from .generation import GenerationContext

        opts = self.options
        name = opts.get("sd_model_checkpoint") or (self.slot.info.title if self.slot.info else None)
        if name is None:
            raise RequestRefused(503, self.slot.load_error or "no checkpoint loaded")
        model = self.slot.ensure_for_request(self.inventory.find_checkpoint(str(name)), str(opts["sd_vae"]))
        info = self.slot.info
        assert info is not None
        # A1111 stores the loaded model's title, whatever alias was sent.
        opts["sd_model_checkpoint"] = info.title
        context = GenerationContext(
            model=model,
            info=info,
            opts=opts,
            inventory=self.inventory,
            state=self.state,
            device=self.runtime.device,
            work_dir=self.slot.work_dir,
            clip_tokenizer=self.config.clip_tokenizer,
            global_rng=self.global_rng,
        )
        return make_run(prepared, context).execute()


def start_background_load(engine: Engine) -> threading.Thread:
    """A1111 starts listening before the model is loaded; txt2img waits on the lock until it is."""
    thread = threading.Thread(target=engine.load_default, name="model-load", daemon=True)
    thread.start()
    return thread
