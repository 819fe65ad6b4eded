"""Runs a conversion once per volume: per-source lock, temp + rename, the output hashed and registered with
its lineage.

The converters themselves (``worker.registry.convert``) only write the path they are given; everything that
makes a conversion safe on a shared volume is here. The output is written to a hidden
``.<name>.<pid>.part`` beside its final name, fsynced and renamed; on any failure it is removed. A second
worker waits on the lock and reuses the first one's output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from worker.clock import Clock
from worker.registry.atomic_files import fsync_dir
from worker.registry.conversions import (
    CONVERTER_VERSION,
    ConversionFailed,
    ConversionResult,
    Summary,
    Target,
    check_convertible,
    existing_conversion,
    options_for,
    output_name,
)
from worker.registry.hashing import ByteProgress, Hasher
from worker.registry.inspection import inspect_file
from worker.registry.inventory import Inventory
from worker.registry.keymaps import Component
from worker.registry.layouts import LayoutError, inspect_diffusers_folder, inspect_training_folder
from worker.registry.locks import held
from worker.registry.models import Lineage, LiveEntry, LiveRegistry, entry_key
from worker.registry.names import contained_path
from worker.registry.pipeline_configs import CONFIG_METADATA_KEY, REAL_CONFIGS
from worker.registry.safetensors_header import HeaderError, read_header
from worker.registry.volume import KIND_DIRS, LOCK_DIR, FoundFile, change_key, is_current

log = logging.getLogger(__name__)

#: room left on the volume besides a conversion's output
_SPARE_BYTES = 64 * 1024 * 1024


class ConversionRunner:
    """Runs one conversion once per volume: per-source lock, temp + rename, hashes and lineage registered.

    Args:
        models_dir: the volume's models folder.
        inventory: the live registry (the output is registered under its lock).
        hasher: the full-file hash function (the output is hashed like any new file).
        clock: ``converted_at``, durations and the wait for another worker's conversion.
    """

    def __init__(self, *, models_dir: Path, inventory: Inventory, hasher: Hasher, clock: Clock):
        self.models_dir = models_dir
        self.inventory = inventory
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
        progress: ByteProgress | None = None,
    ) -> ConversionResult:
        """Convert ``source`` for ``target`` unless a current conversion exists (``force`` redoes it).

        Raises:
            ConversionFailed: it cannot be converted, the output name is taken, another worker held the
                lock past ``wait_s``, or the conversion itself failed (nothing is left behind).
        """
        started = self.clock.monotonic()
        if not check_convertible(source, target):
            return ConversionResult(source.key, target, "not needed")
        options = options_for(target, half=half, alpha=alpha)
        if not force:
            done = existing_conversion(self.inventory.store.read(), source, target, options)
            if done is not None and self.inventory.current(done):
                return ConversionResult(source.key, target, "reused", done)
        token = (source.sha256 or hashlib.sha256(source.key.encode()).hexdigest())[:16]

        def timed_out() -> ConversionFailed:
            return ConversionFailed(
                f"another worker is still converting {source.key} after {wait_s:.0f}s",
                details={"source": source.key},
            )

        lock = self.models_dir / LOCK_DIR / f"convert-{token}-{target}.lock"
        with held(lock, wait_s=wait_s, clock=self.clock, timed_out=timed_out):
            registry = self.inventory.store.read()
            if not force:
                done = existing_conversion(registry, source, target, options)
                if done is not None and self.inventory.current(done):
                    return ConversionResult(
                        source.key, target, "reused", done, notes=("converted by another worker",)
                    )
            return self._convert_locked(
                source, target, registry, options, half, force, alpha, base, progress, started
            )

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
        progress: ByteProgress | None,
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
            if not is_current(self.models_dir, source):
                raise ConversionFailed(f"{source.file_name} changed while it was being converted; try again")
            _place(tmp, dest)
        except BaseException:
            _remove(tmp)
            raise
        entry = self._register(source, dest, name, options, summary.facts)
        seconds = self.clock.monotonic() - started
        log.info("converted %s -> %s (%s) in %.1f s", source.key, entry.key, target, seconds)
        return ConversionResult(source.key, target, "converted", entry, seconds, tuple(summary.notes))

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
        progress: ByteProgress | None,
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
        size, mtime_ns = change_key(dest)
        found = FoundFile(source.kind, name, dest, size, mtime_ns, folder=dest.is_dir())
        entry = inspect_file(found, allow_pickle=False, hasher=self.hasher)
        entry.lineage = Lineage(
            source=source.key,
            source_sha256=source.sha256,
            converter=CONVERTER_VERSION,
            converted_at=self.clock.time(),
            options=options,
        )
        entry.details = {**entry.details, **{k: v for k, v in facts.items() if k not in entry.details}}
        self.inventory.put(entry)
        return entry


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
