"""Which conversion a model needs for an engine, where the output goes, and whether it already exists.

Pure functions over registry entries; ``ModelRegistry.convert`` does the I/O (lock, temp + rename,
lineage). Outputs sit beside their source in the same kind folder, under names A1111 users can type:

* LoRA ``loras/x.safetensors`` (diffusers/PEFT) -> ``loras/x-kohya.safetensors``; a generic stem
  (``pytorch_lora_weights``, ``adapter_model``) takes the folder's name: ``loras/run/run-kohya.safetensors``;
* training folder ``loras/run/checkpoint-500`` -> ``loras/run/run-step500-kohya.safetensors``;
* diffusers folder ``checkpoints/ft`` -> ``checkpoints/ft.safetensors``;
* single file ``checkpoints/x.safetensors`` -> ``checkpoints/x-diffusers/`` (for the embedded engine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from filelock import FileLock, Timeout

from worker.errors import ModelIncompatible
from worker.registry.hashing import Hasher, Progress
from worker.registry.keymaps import Component
from worker.registry.layouts import (
    Engine,
    LayoutError,
    folder_stat,
    inspect_diffusers_folder,
    inspect_training_folder,
)
from worker.registry.models import Lineage, LiveEntry, LiveRegistry, entry_key
from worker.registry.names import contained_path
from worker.registry.pipeline_configs import CONFIG_METADATA_KEY, REAL_CONFIGS
from worker.registry.safetensors_header import HeaderError, read_header
from worker.registry.scan import KIND_DIRS, FoundFile, inspect_file
from worker.registry.store import RegistryStore, fsync_dir

log = logging.getLogger(__name__)

#: recorded in every output's lineage; bump when a conversion's output changes for the same input
CONVERTER_VERSION = "worker.registry.convert/1"

Target = Literal["a1111", "diffusers"]
TARGETS: tuple[Target, ...] = ("a1111", "diffusers")
_GENERIC_STEMS = frozenset({"pytorch_lora_weights", "adapter_model", "model", "diffusion_pytorch_model"})
_LAYOUT_NAMES = {
    "diffusers": "diffusers",
    "peft": "PEFT",
    "kohya": "kohya",
    "lycoris": "LyCORIS",
    "ldm": "A1111",
}


class ConversionFailed(ModelIncompatible):
    """A model that cannot be converted (unknown base model, missing weights, truncated file...)."""


@dataclass
class Summary:
    """What a converter did, for the CLI, the registry's lineage and the logs."""

    tensors: int = 0
    bytes_written: int = 0
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversionResult:
    """One source's outcome: ``converted`` now, an earlier conversion ``reused``, or ``not needed``."""

    source: str
    target: Target
    status: Literal["converted", "reused", "not needed"]
    output: LiveEntry | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()


def describe_layout(entry: LiveEntry) -> str:
    if entry.format == "training":
        step = entry.details.get("step")
        state = _LAYOUT_NAMES.get(entry.layout or "", "unknown")
        return f"training folder ({state} state{f', step {step}' if step is not None else ''})"
    if entry.format == "diffusers":
        return "diffusers pipeline folder"
    return f"{_LAYOUT_NAMES.get(entry.layout or '', entry.layout or 'unknown')} layout"


def default_target(entry: LiveEntry) -> Target | None:
    """What ``convert`` does without ``--to``: whatever A1111 cannot use becomes usable; a single file
    becomes a diffusers folder (for the embedded engine's faster load); None: nothing to do."""
    if entry.usable_by is not None and "a1111" not in entry.usable_by:
        return "a1111"
    if entry.kind == "checkpoint" and entry.layout == "ldm":
        return "diffusers"
    return None


def target_for_engine(entry: LiveEntry, engine: Engine) -> Target | None:
    """The conversion a job needs before ``engine`` can use ``entry`` (None: usable as it is).

    The A1111 outputs (kohya LoRA files, single-file checkpoints) serve both engines.
    """
    if entry.usable_by is None or engine in entry.usable_by:
        return None
    return "a1111"


def check_convertible(entry: LiveEntry, target: Target) -> bool:
    """True when a conversion to ``target`` applies; False when the entry is already usable that way.

    Raises:
        ConversionFailed: the entry can never be converted to ``target`` (says why).
    """
    label = f"{entry.kind} {entry.file_name}"
    if not entry.usable:
        raise ConversionFailed(f"{label} cannot be converted: {entry.problem}")
    if target == "diffusers":
        if entry.kind != "checkpoint":
            raise ConversionFailed(
                f"{label}: only checkpoints convert to a diffusers folder; the embedded engine reads kohya, "
                "diffusers and PEFT LoRA files as they are"
            )
        if entry.format == "diffusers":
            return False
        if entry.layout != "ldm" or entry.format != "safetensors":
            raise ConversionFailed(f"{label} is not a safetensors single-file checkpoint")
        return True
    if entry.usable_by is None or "a1111" in entry.usable_by:
        return False
    if entry.kind not in ("checkpoint", "lora"):
        raise ConversionFailed(f"{label}: {entry.kind}s need no conversion (A1111 reads them as they are)")
    if entry.kind == "lora" and entry.layout not in ("diffusers", "peft"):
        raise ConversionFailed(f"{label} has no LoRA layout this converter knows ({entry.layout})")
    return True


def output_name(entry: LiveEntry, target: Target) -> str:
    """The output's file name in the same kind folder (see the module docstring)."""
    path = PurePosixPath(entry.file_name)
    parent = path.parent
    if target == "diffusers":
        return str(parent / f"{path.stem}-diffusers")
    if entry.kind == "checkpoint":
        return str(parent / f"{path.name}.safetensors")
    if entry.format == "training":
        step = entry.details.get("step")
        run = parent.name or path.name
        label = f"{run}-step{step}" if step is not None and parent.name else path.name
        return str(parent / f"{label}-kohya.safetensors")
    stem = path.stem
    if stem in _GENERIC_STEMS and parent.name:
        stem = parent.name
    return str(parent / f"{stem}-kohya.safetensors")


def conversion_hint(entry: LiveEntry, target: Target = "a1111") -> str:
    """The command that fixes it, as an operator types it."""
    return f"python -m worker registry convert {KIND_DIRS[entry.kind]}/{entry.file_name} --to {target}"


def _output_format(target: Target) -> str:
    return "diffusers" if target == "diffusers" else "safetensors"


def existing_conversion(
    registry: LiveRegistry, source: LiveEntry, target: Target, options: dict[str, Any]
) -> LiveEntry | None:
    """A registered output of ``source`` (same content, same converter and options) for ``target``, or the
    file ``source`` itself was converted from, when that one still matches its recorded hash."""
    for entry in registry.models.values():
        lineage = entry.lineage
        if (
            lineage is not None
            and entry.usable
            and lineage.source == source.key
            and lineage.source_sha256 == source.sha256
            and lineage.converter == CONVERTER_VERSION
            and lineage.options == options
            and entry.format == _output_format(target)
        ):
            return entry
    if source.lineage is not None:
        origin = registry.models.get(source.lineage.source)
        if (
            origin is not None
            and origin.usable
            and origin.sha256 == source.lineage.source_sha256
            and origin.format == _output_format(target)
        ):
            return origin
    return None


def options_for(target: Target, *, half: bool, alpha: float | None) -> dict[str, Any]:
    return {"target": target, "half": half, "alpha": alpha}


def output_key(entry: LiveEntry, target: Target) -> str:
    return entry_key(entry.kind, output_name(entry, target))


class ConversionRunner:
    """Runs one conversion once per volume: per-source lock, temp + rename, hashes and lineage registered.

    Args:
        models_dir: the volume's models folder.
        store: the live registry (the output is registered under its lock).
        hasher: the full-file hash function (the output is hashed like any new file).
        clock: wall clock for ``converted_at``.
    """

    def __init__(self, *, models_dir: Path, store: RegistryStore, hasher: Hasher, clock: Callable[[], float]):
        self.models_dir = models_dir
        self.store = store
        self.hasher = hasher
        self.clock = clock

    def run(
        self,
        source: LiveEntry,
        target: Target,
        *,
        wait_s: float,
        half: bool = False,
        force: bool = False,
        alpha: float | None = None,
        base: LiveEntry | None = None,
        progress: Progress | None = None,
    ) -> ConversionResult:
        """Convert ``source`` for ``target`` unless a current conversion exists (``force`` redoes it).

        Raises:
            ConversionFailed: it cannot be converted, the output name is taken, another worker held the
                lock past ``wait_s``, or the conversion itself failed (nothing is left behind).
        """
        started = time.monotonic()
        if not check_convertible(source, target):
            return ConversionResult(source.key, target, "not needed")
        options = options_for(target, half=half, alpha=alpha)
        if not force:
            done = existing_conversion(self.store.read(), source, target, options)
            if done is not None and self._current(done):
                return ConversionResult(source.key, target, "reused", done)
        lock_dir = self.models_dir / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        token = (source.sha256 or hashlib.sha256(source.key.encode()).hexdigest())[:16]
        lock = FileLock(str(lock_dir / f"convert-{token}-{target}.lock"), timeout=wait_s)
        try:
            lock.acquire()
        except Timeout:
            raise ConversionFailed(
                f"another worker is still converting {source.key} after {wait_s:.0f}s",
                details={"source": source.key},
            ) from None
        try:
            registry = self.store.read()
            if not force:
                done = existing_conversion(registry, source, target, options)
                if done is not None and self._current(done):
                    return ConversionResult(
                        source.key, target, "reused", done, notes=("converted by another worker",)
                    )
            return self._convert_locked(
                source, target, registry, options, half, force, alpha, base, progress, started
            )
        finally:
            lock.release()

    def _convert_locked(
        self,
        source: LiveEntry,
        target: Target,
        registry: LiveRegistry,
        options: dict[str, Any],
        half: bool,
        force: bool,
        alpha: float | None,
        base: LiveEntry | None,
        progress: Progress | None,
        started: float,
    ) -> ConversionResult:
        root = self.models_dir / KIND_DIRS[source.kind]
        src = root / source.file_name
        name = output_name(source, target)
        dest = contained_path(root, name, what="conversion output")
        held = registry.models.get(entry_key(source.kind, name))
        ours = held is not None and held.lineage is not None and held.lineage.source == source.key
        if (dest.exists() or dest.is_symlink()) and not (ours or force):
            raise ConversionFailed(
                f"{KIND_DIRS[source.kind]}/{name} exists and is not a conversion of {source.file_name}; "
                "move it away or pass --force to replace it",
                details={"output": name},
            )
        free = shutil.disk_usage(dest.parent).free
        if free < source.size + _SPARE_BYTES:
            raise ConversionFailed(
                f"not enough space for {name}: {free} bytes free, about {source.size + _SPARE_BYTES} needed"
            )
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            summary = self._write(
                source, src, target, tmp, half=half, alpha=alpha, base=base, progress=progress
            )
            if not _same_stat(src, source):
                raise ConversionFailed(f"{source.file_name} changed while it was being converted; try again")
            _place(tmp, dest)
        except BaseException:
            _remove(tmp)
            raise
        entry = self._register(source, dest, name, options, summary.facts)
        log.info(
            "converted %s -> %s (%s) in %.1f s", source.key, entry.key, target, time.monotonic() - started
        )
        return ConversionResult(
            source.key, target, "converted", entry, time.monotonic() - started, tuple(summary.notes)
        )

    def _write(
        self,
        source: LiveEntry,
        src: Path,
        target: Target,
        tmp: Path,
        *,
        half: bool,
        alpha: float | None,
        base: LiveEntry | None,
        progress: Progress | None,
    ) -> Summary:
        # numpy is imported only when something is converted: scans and jobs never pay for it
        from worker.registry.convert import (
            checkpoint_from_diffusers,
            diffusers_from_checkpoint,
            kohya_from_lora,
        )

        try:
            if target == "diffusers":
                return diffusers_from_checkpoint(src, tmp, half=half, progress=progress)
            if source.kind == "checkpoint":
                return checkpoint_from_diffusers(
                    inspect_diffusers_folder(src), tmp, half=half, progress=progress
                )
            unet_config, text_widths = self._base_configs(base)
            if source.format == "training":
                training = inspect_training_folder(src)
                files, adapter_config = training.lora_files, training.adapter_config
            else:
                sidecar = src.parent / "adapter_config.json"
                files = [src]
                adapter_config = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
            return kohya_from_lora(
                files,
                tmp,
                unet_config=unet_config,
                text_widths=text_widths,
                adapter_config=adapter_config,
                alpha=alpha,
                half=half,
                progress=progress,
            )
        except LayoutError as exc:
            raise ConversionFailed(str(exc)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConversionFailed(f"{source.file_name}: unreadable adapter_config.json ({exc})") from None

    def _base_configs(self, base: LiveEntry | None) -> tuple[dict[str, Any] | None, dict[Component, int]]:
        """The base checkpoint's UNet config and text-encoder widths, when the registry can read them."""
        if base is None or base.kind != "checkpoint":
            return None, {}
        path = self.models_dir / KIND_DIRS["checkpoint"] / base.file_name
        configs: dict[str, dict[str, Any]] = {}
        try:
            if base.format == "diffusers":
                configs = inspect_diffusers_folder(path).configs
            elif base.format == "safetensors":
                raw = read_header(path).metadata.get(CONFIG_METADATA_KEY)
                configs = json.loads(raw) if raw else {}
        except (LayoutError, HeaderError, OSError, json.JSONDecodeError) as exc:
            log.warning(
                "cannot read the configs of base checkpoint %s (%s); using the standard ones", base.key, exc
            )
        if not configs and base.architecture in ("sd15", "sdxl"):
            configs = REAL_CONFIGS["sd15" if base.architecture == "sd15" else "sdxl"]
        widths: dict[Component, int] = {}
        for component in ("text_encoder", "text_encoder_2"):
            hidden = configs.get(component, {}).get("hidden_size")
            if isinstance(hidden, int):
                widths[component] = hidden
        return configs.get("unet"), widths

    def _register(
        self, source: LiveEntry, dest: Path, name: str, options: dict[str, Any], facts: dict[str, Any]
    ) -> LiveEntry:
        if dest.is_dir():
            size, mtime_ns = folder_stat(dest)
        else:
            st = dest.stat()
            size, mtime_ns = st.st_size, st.st_mtime_ns
        found = FoundFile(source.kind, name, dest, size, mtime_ns, folder=dest.is_dir())
        entry = inspect_file(found, allow_pickle=False, hasher=self.hasher)
        entry.lineage = Lineage(
            source=source.key,
            source_sha256=source.sha256,
            converter=CONVERTER_VERSION,
            converted_at=self.clock(),
            options=options,
        )
        entry.details = {**entry.details, **{k: v for k, v in facts.items() if k not in entry.details}}

        def put(registry: LiveRegistry) -> None:
            old = registry.models.get(entry.key)
            if old is not None:
                entry.last_used, entry.use_count = old.last_used, old.use_count
            registry.models[entry.key] = entry

        self.store.update(put)
        return entry

    def _current(self, entry: LiveEntry) -> bool:
        path = self.models_dir / KIND_DIRS[entry.kind] / entry.file_name
        return _same_stat(path, entry)


#: room left on the volume besides a conversion's output
_SPARE_BYTES = 64 * 1024 * 1024


def _same_stat(path: Path, entry: LiveEntry) -> bool:
    try:
        if path.is_dir():
            size, mtime_ns = folder_stat(path)
        else:
            st = path.stat()
            size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        return False
    return size == entry.size and mtime_ns == entry.mtime_ns


def _place(tmp: Path, dest: Path) -> None:
    """Rename the finished output into place; an older output of the same source is replaced whole."""
    if tmp.is_dir():
        old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
        _remove(old)
    else:
        os.replace(tmp, dest)
    fsync_dir(dest.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
