"""The one loaded pipeline (A1111 keeps one checkpoint in memory) and the VAE it runs with.

torch and diffusers are imported on the first load, in the engine's background load thread: the server answers
its listings while they import (``docs/performance.md``, cold start).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelLoadError, RequestRefused
from .inventory import ModelInventory
from .models.files import CheckpointInfo

if TYPE_CHECKING:
    from .models.pipelines import LoadedModel, Runtime


class ModelSlot:
    """Loads a checkpoint when another one is asked for and swaps VAEs; callers hold the generation lock."""

    def __init__(
        self, inventory: ModelInventory, clip_tokenizer: Path | None, *, force_cpu: bool, threads: int | None
    ):
        self.inventory = inventory
        self.clip_tokenizer = clip_tokenizer
        self._force_cpu, self._threads = force_cpu, threads
        self._runtime: Runtime | None = None
        self._runtime_lock = threading.Lock()
        #: json-only config folders and converted LoRAs, written once per process
        self.work_dir = Path(tempfile.mkdtemp(prefix="diffusers-server-skeletons-"))
        self.model: LoadedModel | None = None
        self.info: CheckpointInfo | None = None
        self.load_error: str | None = None

    @property
    def runtime(self) -> Runtime:
        """Where and in which precision models run; the first call imports torch and diffusers."""
        with self._runtime_lock:
            if self._runtime is None:
                from .models.pipelines import Runtime

                self._runtime = Runtime.detect(force_cpu=self._force_cpu, threads=self._threads)
            return self._runtime

    def ensure(self, info: CheckpointInfo, vae_choice: str) -> LoadedModel:
        """The loaded model for ``info`` (loading it if another is loaded), with ``vae_choice`` applied.

        Raises:
            ModelLoadError: the file cannot be loaded as SD1.x/SDXL.
            RequestRefused: the file or the VAE is gone.
        """
        from .models.pipelines import load_checkpoint

        if self.model is None or self.info is None or self.info.filename != info.filename:
            self.inventory.present_checkpoint(info)
            self.model = None
            self.model = load_checkpoint(info.filename, self.runtime, self.work_dir, self.clip_tokenizer)
            self.info = info
            self.load_error = None
        self._apply_vae(self.model, vae_choice)
        return self.model

    def ensure_for_request(self, info: CheckpointInfo, vae_choice: str) -> LoadedModel:
        """:meth:`ensure`, with a file that does not load refused as a 400 (A1111 answers the request)."""
        try:
            return self.ensure(info, vae_choice)
        except ModelLoadError as exc:
            raise RequestRefused(400, str(exc)) from exc

    def _apply_vae(self, model: LoadedModel, choice: str) -> None:
        from .models.pipelines import load_vae

        path = self.inventory.vae_path(choice)
        if path == model.vae_path:
            return
        model.pipe.vae = model.original_vae if path is None else load_vae(path, model.skeleton, self.runtime)
        model.vae_path = path
