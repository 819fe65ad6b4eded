"""The model folders as A1111 lists them: checkpoints, LoRAs, embeddings and VAEs, found by any A1111 alias.

Refreshing re-reads a folder; a lookup that misses names the valid choices; a file listed but removed since is
a 404 naming it (never its full path). Files skipped at a refresh are kept with the reason, never silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.registry.layouts import LayoutError

from .config import ServerConfig
from .errors import RequestRefused
from .models import files
from .models.files import CheckpointInfo, HashCache, LoraInfo

if TYPE_CHECKING:
    import torch

    from .prompts import Embedding

log = logging.getLogger(__name__)

#: the ``sd_vae`` choices that mean "the checkpoint's own VAE"
BUILT_IN_VAE = ("Automatic", "None", "")


def parse_embedding(file: Path) -> dict[int, torch.Tensor]:
    """A1111 embeddings: ``emb_params`` (SD1), ``clip_l``/``clip_g`` (SDXL) or ``string_to_param`` (.pt)."""
    import torch
    from safetensors.torch import load_file

    if file.suffix.lower() == ".safetensors":
        data: dict[str, Any] = load_file(str(file))
    else:
        data = torch.load(str(file), map_location="cpu", weights_only=True)
    if "string_to_param" in data:
        data = {"emb_params": next(iter(data["string_to_param"].values()))}
    tensors = [v for k, v in data.items() if k in {"emb_params", "clip_l", "clip_g"}]
    if not tensors and len(data) == 1:
        tensors = list(data.values())
    if not tensors:
        raise ValueError(f"no embedding vectors in {file.name}")
    return {int(t.shape[-1]): t.reshape(-1, t.shape[-1]).float() for t in tensors}


class ModelInventory:
    """What the folders hold, refreshed on request, with A1111's names and the reasons files were skipped."""

    def __init__(self, config: ServerConfig, hashes: HashCache):
        self.config = config
        self.hashes = hashes
        self.checkpoints: list[CheckpointInfo] = []
        self.loras: dict[str, LoraInfo] = {}
        self.embedding_files: dict[str, Path] = {}
        # parsed on first use after each refresh (it needs torch, which the server's start does not import)
        self._embeddings: tuple[dict[str, dict[int, torch.Tensor]], dict[str, str]] | None = None
        self._embeddings_lock = threading.Lock()
        self.vaes: dict[str, Path] = {}
        #: folder kind -> {path: reason} for files listed as unusable and skipped (see files.scan)
        self.unusable: dict[str, dict[str, str]] = {}
        self._clip_layers: dict[Path, int | None] = {}  # checkpoint -> CLIP layers (from its header)

    # ---- refreshing ----

    def refresh_all(self) -> None:
        self.refresh_checkpoints()
        self.refresh_loras()
        self.refresh_embeddings()
        self.refresh_vae()

    def _scan(self, kind: str, folder: Path, exts: tuple[str, ...]) -> list[Path]:
        unusable: dict[str, str] = {}
        found = files.scan(folder, exts, models_dir=self.config.models_dir, unusable=unusable)
        self.unusable[kind] = unusable
        return found

    def refresh_checkpoints(self) -> None:
        """Single files and diffusers pipeline folders (loaded as they are), in A1111's listing order."""
        root = self.config.checkpoints
        infos = []
        for path in self._scan("checkpoints", root, files.CHECKPOINT_EXTS):
            try:
                infos.append(CheckpointInfo.from_file(path, root, self.hashes))
            except OSError as exc:  # removed or unreadable since the listing
                self.unusable["checkpoints"][str(path)] = f"unreadable: {exc.strerror or exc}"
                log.warning("skipping checkpoint %s: %s", path, exc)
        for folder in files.scan_pipelines(root):
            try:
                infos.append(CheckpointInfo.from_folder(folder, root, self.hashes))
            except (LayoutError, OSError) as exc:
                self.unusable["checkpoints"][str(folder)] = f"unusable diffusers folder: {exc}"
                log.warning("skipping diffusers folder %s: %s", folder, exc)
        self.checkpoints = sorted(infos, key=lambda info: info.name.lower())
        log.info("%d checkpoint(s) in %s", len(self.checkpoints), root)

    def refresh_loras(self) -> None:
        infos = [LoraInfo.from_file(p) for p in self._scan("loras", self.config.loras, files.LORA_EXTS)]
        self.loras = {info.name: info for info in infos}
        for info in infos:
            self.loras.setdefault(info.alias, info)

    def refresh_embeddings(self) -> None:
        with self._embeddings_lock:
            self.embedding_files = {
                p.stem: p for p in self._scan("embeddings", self.config.embeddings, files.EMBEDDING_EXTS)
            }
            self._embeddings = None

    def parse_embeddings(self) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, str]]:
        """The listed embeddings' vectors by width, and why others were skipped; parsed once per refresh."""
        with self._embeddings_lock:
            if self._embeddings is None:
                parsed: dict[str, dict[int, torch.Tensor]] = {}
                errors: dict[str, str] = {}
                for name, path in self.embedding_files.items():
                    try:
                        parsed[name] = parse_embedding(path)
                    except (ValueError, KeyError, RuntimeError, OSError) as exc:
                        errors[name] = str(exc)
                        log.warning("skipping embedding %s: %s", path, exc)
                self._embeddings = parsed, errors
            return self._embeddings

    @property
    def embeddings(self) -> dict[str, dict[int, torch.Tensor]]:
        return self.parse_embeddings()[0]

    @property
    def embedding_errors(self) -> dict[str, str]:
        return self.parse_embeddings()[1]

    def refresh_vae(self) -> None:
        self.vaes = {p.name: p for p in self._scan("vae", self.config.vaes, files.VAE_EXTS)}

    # ---- lookups ----

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        """Any A1111 alias (title, name, stem, model_name, shorthash, sha256, old hash); else 404."""
        for info in self.checkpoints:
            if name in info.aliases:
                return info
        titles = ", ".join(i.title for i in self.checkpoints) or "(none)"
        raise RequestRefused(404, f"checkpoint {name!r} not found; available: {titles}")

    def present_checkpoint(self, info: CheckpointInfo) -> CheckpointInfo:
        """``info`` when its file (or diffusers folder) is still there; else 404 after a refresh."""
        if not (info.filename.is_file() or info.filename.is_dir()):
            raise self._gone(
                "checkpoint",
                info.title,
                self.refresh_checkpoints,
                lambda: [i.title for i in self.checkpoints],
            )
        return info

    def vae_path(self, choice: str | None) -> Path | None:
        """The file an ``sd_vae`` choice names; ``None`` for the checkpoint's own VAE."""
        if choice is None or choice in BUILT_IN_VAE:
            return None
        if choice not in self.vaes:
            raise RequestRefused(
                404, f"VAE {choice!r} not found; available: Automatic, None, {', '.join(self.vaes)}"
            )
        if not self.vaes[choice].is_file():
            raise self._gone("VAE", choice, self.refresh_vae, lambda: ["Automatic", "None", *self.vaes])
        return self.vaes[choice]

    def lora(self, name: str) -> LoraInfo:
        """A LoRA by file stem or alias, refreshing the folder once when it is not listed; else 404."""
        if name not in self.loras:
            self.refresh_loras()
        if name not in self.loras:
            raise RequestRefused(404, f"LoRA {name!r} not found; available: {self._lora_names_text()}")
        if not self.loras[name].filename.is_file():
            raise self._gone("LoRA", name, self.refresh_loras, lambda: sorted(self._lora_names()))
        return self.loras[name]

    def _lora_names(self) -> set[str]:
        return {info.name for info in self.loras.values()}

    def _lora_names_text(self) -> str:
        return ", ".join(sorted(self._lora_names())) or "(none)"

    def clip_layers(self, info: CheckpointInfo) -> int | None:
        """How many layers the checkpoint's CLIP text encoder has (read once from its header)."""
        if info.filename not in self._clip_layers:
            self._clip_layers[info.filename] = files.clip_layers(info.filename)
        return self._clip_layers[info.filename]

    def embeddings_for(self, text_widths: tuple[int, ...]) -> dict[str, Embedding]:
        """The embeddings with vectors for every text encoder of a model of these widths."""
        from .prompts import Embedding

        return {n: Embedding(n, v) for n, v in self.embeddings.items() if set(text_widths) <= v.keys()}

    @staticmethod
    def _gone(
        what: str, name: str, refresh: Callable[[], None], names: Callable[[], list[str]]
    ) -> RequestRefused:
        """A listed model file that was removed from disk since: 404 naming it, never its full path."""
        refresh()
        return RequestRefused(
            404,
            f"{what} {name!r} was removed from disk after it was listed; "
            f"available: {', '.join(names()) or '(none)'}",
        )

    # ---- listings ----

    def unusable_listing(self) -> list[dict[str, str]]:
        """Files skipped at the last refresh of each folder, with the reason (never silently)."""
        return [
            {"kind": kind, "filename": path, "reason": reason}
            for kind, found in sorted(self.unusable.items())
            for path, reason in sorted(found.items())
        ]

    def embeddings_listing(self, text_widths: tuple[int, ...] | None) -> dict[str, Any]:
        """``GET /embeddings``: loaded (fits the loaded model, or no model yet) and skipped ones."""
        widths = set(text_widths) if text_widths is not None else None
        loaded: dict[str, Any] = {}
        skipped: dict[str, Any] = {}
        for name, vectors in self.embeddings.items():
            first = next(iter(vectors.values()))
            item = {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": int(first.shape[-1]),
                "vectors": int(first.shape[0]),
            }
            (loaded if widths is None or widths <= vectors.keys() else skipped)[name] = item
        return {"loaded": loaded, "skipped": skipped}
