"""What one model file or folder is, from its header (never the tensor data), and its hashes.

Detection reads the safetensors header only; hashing is the one full read, stopped at the scan's
deadline (the next scan hashes what is left). A file the file policy refused (``FoundFile.problem``) is
described from its name alone and never opened.
"""

from __future__ import annotations

import logging
from typing import Any

from worker.clock import Deadline
from worker.registry.detect import detect, unet_in_channels
from worker.registry.hashing import ByteProgress, Hasher, folder_digest, hash_file
from worker.registry.layouts import (
    ENGINES,
    LayoutError,
    inspect_diffusers_folder,
    inspect_training_folder,
    lora_facts,
)
from worker.registry.models import LiveEntry
from worker.registry.safetensors_header import HeaderError, SafetensorsHeader, read_header
from worker.registry.upscalers import SAFETENSORS_NOT_LISTED, upscaler_family
from worker.registry.volume import KIND_DIRS, SAFETENSORS_EXT, FoundFile

log = logging.getLogger(__name__)

_KEEP_META = ("ss_output_name", "ss_base_model_version", "sshs_model_hash", "ss_sd_model_name")
_MAX_META_CHARS = 512
_PICKLE_REFUSED = "pickle format (.ckpt/.pt/.bin) can run code; refused unless WORKER_ALLOW_PICKLE"
#: Kinds whose pickles A1111 loads only through spandrel's restricted unpickler (tensors and ordered
#: dicts, no other globals): no code can run, so no WORKER_ALLOW_PICKLE. Nearly every upscaler is a .pth.
_RESTRICTED_UNPICKLE_KINDS = frozenset({"upscaler"})


class ScanDeadline(Exception):
    """Raised from the hashing loop when the scan's deadline has passed."""


def inspect_file(
    found: FoundFile,
    *,
    allow_pickle: bool,
    hasher: Hasher | None = hash_file,
    progress: ByteProgress | None = None,
    deadline: Deadline | None = None,
) -> LiveEntry:
    """Describe one file: header-based detection, usability, and (when ``hasher``) its hashes.

    Past ``deadline`` the hash is left out (the next scan computes it).
    """
    fields: dict[str, Any] = {
        "kind": found.kind,
        "file_name": found.file_name,
        "size": found.size,
        "mtime_ns": found.mtime_ns,
    }
    if found.problem is not None:
        is_safetensors = found.file_name.lower().endswith(SAFETENSORS_EXT)
        fields.update(
            format="safetensors" if is_safetensors else "pickle", usable=False, problem=found.problem
        )
        return LiveEntry(**fields)
    if found.folder:
        fields.update(_inspect_folder(found))
        if hasher is not None and fields.get("usable", True):
            _hash_folder(found, fields, hasher, progress, deadline)
        return LiveEntry(**fields)
    addnet_offset: int | None = None
    if found.file_name.lower().endswith(SAFETENSORS_EXT):
        addnet_offset = _inspect_safetensors(found, fields)
    else:
        fields["format"] = "pickle"
        if not allow_pickle and found.kind not in _RESTRICTED_UNPICKLE_KINDS:
            fields.update(usable=False, problem=_PICKLE_REFUSED)
    if hasher is not None:
        _hash_file(found, fields, hasher, addnet_offset, progress, deadline)
    return LiveEntry(**fields)


def _inspect_safetensors(found: FoundFile, fields: dict[str, Any]) -> int | None:
    """Fill ``fields`` from the header; returns where a LoRA's "addnet" hash starts (None for other kinds)."""
    fields["format"] = "safetensors"
    try:
        header = read_header(found.path, file_size=found.size)
    except HeaderError as exc:
        fields.update(usable=False, problem=f"unusable safetensors file: {exc}")
        return None
    except OSError as exc:
        fields.update(usable=False, problem=f"unreadable: {exc.strerror or exc}")
        return None
    fields.update(_header_fields(found, header))
    return header.data_offset if found.kind == "lora" else None


def _header_fields(found: FoundFile, header: SafetensorsHeader) -> dict[str, Any]:
    detection = detect(header.tensors, header.metadata)
    fields: dict[str, Any] = {
        "detected_kind": detection.kind,
        "architecture": detection.architecture,
        "metadata": _kept_metadata(header.metadata),
    }
    if detection.kind == "checkpoint":
        fields.update(layout="ldm", usable_by=list(ENGINES))
        channels = unet_in_channels(header.tensors)
        if channels is not None:
            fields["details"] = {"unet_in_channels": channels}
    facts = lora_facts(header.tensors) if detection.kind == "lora" else None
    if facts is not None:
        fields.update(
            layout=facts.layout,
            usable_by=list(facts.usable_by),
            details={"rank": facts.rank, "modules": facts.modules, "components": list(facts.components)},
        )
    if detection.kind == "upscaler":
        fields.update(architecture=None, usable_by=[], details={"family": upscaler_family(header.tensors)})
        fields.update(usable=False, problem=SAFETENSORS_NOT_LISTED)
    if detection.kind is not None and detection.kind != found.kind:
        fields.update(
            usable=False,
            problem=f"looks like {_article(detection.kind)} {detection.kind} but sits in the "
            f"{KIND_DIRS[found.kind]}/ folder",
        )
    return fields


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _kept_metadata(metadata: dict[str, str]) -> dict[str, str]:
    kept = {}
    for key, value in metadata.items():
        if key in _KEEP_META or (key.startswith("modelspec.") and key != "modelspec.thumbnail"):
            kept[key] = value[:_MAX_META_CHARS]
    return kept


def _hash_file(
    found: FoundFile,
    fields: dict[str, Any],
    hasher: Hasher,
    addnet_offset: int | None,
    progress: ByteProgress | None,
    deadline: Deadline | None,
) -> None:
    if deadline is not None and deadline.passed():
        return
    try:
        hashes = hasher(found.path, addnet_offset, _bounded(progress, deadline))
    except ScanDeadline:
        log.warning("scan deadline reached while hashing %s; its hash is left for the next scan", found.path)
    except OSError as exc:
        fields.update(usable=False, problem=f"unreadable: {exc.strerror or exc}")
    else:
        fields.update(sha256=hashes.sha256, short_hash=hashes.short_hash, addnet_hash=hashes.addnet)


def _hash_folder(
    found: FoundFile,
    fields: dict[str, Any],
    hasher: Hasher,
    progress: ByteProgress | None,
    deadline: Deadline | None,
) -> None:
    if deadline is not None and deadline.passed():
        return
    try:
        fields["sha256"] = folder_digest(found.path, hasher, _bounded(progress, deadline))
        fields["short_hash"] = fields["sha256"][:10]
    except ScanDeadline:
        log.warning("scan deadline reached while hashing %s; left for the next scan", found.path)
    except OSError as exc:
        fields.update(usable=False, problem=f"unreadable: {exc.strerror or exc}")


def _bounded(progress: ByteProgress | None, deadline: Deadline | None) -> ByteProgress | None:
    """The hasher's progress callback, raising ``ScanDeadline`` once the deadline has passed."""
    if deadline is None:
        return progress

    def check(n: int) -> None:
        if progress is not None:
            progress(n)
        if deadline.passed():
            raise ScanDeadline

    return check


def _inspect_folder(found: FoundFile) -> dict[str, Any]:
    """A model folder's entry fields from its json files and headers (never the tensor data)."""
    try:
        if found.kind == "checkpoint":
            return _pipeline_folder_fields(found)
        return _training_folder_fields(found)
    except (LayoutError, HeaderError) as exc:
        layout_format = "diffusers" if found.kind == "checkpoint" else "training"
        return {"detected_kind": found.kind, "format": layout_format, "usable": False, "problem": str(exc)}
    except OSError as exc:
        return {
            "detected_kind": found.kind,
            "format": "other",
            "usable": False,
            "problem": f"unreadable: {exc.strerror or exc}",
        }


def _pipeline_folder_fields(found: FoundFile) -> dict[str, Any]:
    pipeline = inspect_diffusers_folder(found.path)
    return {
        "detected_kind": found.kind,
        "format": "diffusers",
        "layout": "diffusers",
        "architecture": pipeline.architecture,
        # A1111 loads single files only; the embedded engine loads the folder itself
        "usable_by": ["embedded"],
        "details": {
            "pipeline": pipeline.pipeline,
            "precision": pipeline.precision,
            "components": sorted(pipeline.weights),
            "tokenizer": pipeline.has_tokenizer,
        },
    }


def _training_folder_fields(found: FoundFile) -> dict[str, Any]:
    training = inspect_training_folder(found.path)
    header = read_header(training.lora_files[0])
    facts = lora_facts(header.tensors)
    fields: dict[str, Any] = {
        "detected_kind": found.kind,
        "format": "training",
        "layout": facts.layout if facts else None,
        "architecture": detect(header.tensors, header.metadata).architecture,
        "usable_by": [],  # no engine lists a folder: convert it to a LoRA file
        "details": {
            "step": training.step,
            "rank": facts.rank if facts else None,
            "modules": facts.modules if facts else 0,
            "optimizer_state": training.optimizer,
            "base_model": training.base_model,
            "lora_files": [p.name for p in training.lora_files],
        },
    }
    if facts is None:
        fields.update(usable=False, problem=f"{training.lora_files[0].name} holds no LoRA tensors")
    return fields
