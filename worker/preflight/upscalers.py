"""Upscaler names for extras: listed by the engine, backed by a file it will not download at request time.

A1111 v1.10.1 lists its upscalers once, at start (``modelloader.load_upscalers``; measured: a file copied
later is not listed until a restart, docs/registry.md), and lists its built-in ones (``R-ESRGAN 4x+``,
``DAT x4``, ``SwinIR 4x``, ``ScuNET GAN``, ``ESRGAN_4x``, ``LDSR``) with the address it downloads them
from on first use. Offline, that download fails and A1111 answers 200 with a plain Lanczos resize: the
worker refuses such a name unless the file is on the volume where A1111 looks for it.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import NoReturn

from worker.a1111.catalog import EngineCatalog
from worker.errors import InputInvalid, ModelNotFound, excerpt
from worker.model_types import ModelProvider
from worker.preflight.matching import match_name, nearest

#: built-in name prefix -> the sub-folder of the volume's upscaler folder A1111 finds its file in (start.sh
#: points --realesrgan-models-path and --dat-models-path there); other built-ins always download
BUILTIN_FOLDERS: dict[str, str] = {"R-ESRGAN ": "RealESRGAN", "DAT x": "DAT"}
#: A1111's LDSR lists no address but downloads its model into A1111's own models/LDSR on first use
DOWNLOADS_UNLISTED = frozenset({"LDSR"})


def resolve_upscaler(
    field: str, name: str, engine_catalog: EngineCatalog, provider: ModelProvider | None, *, embedded: bool
) -> str:
    """``name`` as the engine lists it, once its weights are known to be where the engine loads them.

    Raises:
        InputInvalid: not listed (with the valid names), or on the volume but the engine runs no such model.
        ModelNotFound: on the volume but not listed yet (A1111 needs a restart), or a built-in A1111 would
            download.
        ModelIncompatible: the volume's file is unusable (a .safetensors upscaler, which A1111 does not list).
    """
    choices = list(engine_catalog.image_upscalers)
    found = match_name(name, choices)
    if found is None:
        _refuse_unlisted(field, name, choices, provider, embedded=embedded)
    check_upscaler_weights(field, found, engine_catalog, provider)
    return found


def check_upscaler_weights(
    field: str, name: str, engine_catalog: EngineCatalog, provider: ModelProvider | None
) -> None:
    """A listed upscaler's weights: a volume file must be usable, a built-in must not be downloaded now."""
    if provider is not None:
        provider.describe("upscaler", name)  # raises naming why a volume file is unusable
    _check_not_downloaded(field, name, engine_catalog.upscaler_paths.get(name), provider)


def _refuse_unlisted(
    field: str, name: str, choices: list[str], provider: ModelProvider | None, *, embedded: bool
) -> NoReturn:
    listed = f"valid: {', '.join(choices)}"
    facts = provider.describe("upscaler", name) if provider is not None else None
    if facts is None:
        close = nearest(name, choices)
        hint = f"nearest: {', '.join(close)}; " if close else ""
        raise InputInvalid(f"{field} {excerpt(name)} not found; {hint}{listed}")
    if embedded:
        raise InputInvalid(
            f"{field} {name!r} is an ESRGAN-family upscaler on the volume ({facts.file_name}), which the "
            f"embedded engine cannot run (WORKER_ENGINE=a1111 can); {listed}"
        )
    raise ModelNotFound(
        f"{field} {name!r} is on the volume ({facts.file_name}) but A1111 does not list it: A1111 reads its "
        f"upscaler folders only when it starts, so restart the worker to use it; {listed}",
        details={"file": facts.file_name},
    )


def _check_not_downloaded(
    field: str, name: str, model_path: str | None, provider: ModelProvider | None
) -> None:
    """Refuse a built-in upscaler whose weights A1111 would fetch now (its file not where A1111 looks)."""
    if name in DOWNLOADS_UNLISTED:
        raise ModelNotFound(
            f"{field} {name!r} downloads its model when first used; this worker never downloads while a job "
            "waits: use an upscaler file from the volume's upscaler folder"
        )
    if model_path is None or not model_path.startswith(("http://", "https://")):
        return
    file_name = PurePosixPath(model_path).name
    folder = next((sub for prefix, sub in BUILTIN_FOLDERS.items() if name.startswith(prefix)), None)
    on_volume = f"{folder}/{file_name}"
    if folder is not None and provider is not None and provider.describe("upscaler", on_volume) is not None:
        return
    where = (
        f"put {file_name} in the volume's upscaler folder under {folder}/"
        if folder is not None
        else f"put an upscaler file (e.g. {file_name}) in the volume's upscaler folder, named by its stem"
    )
    raise ModelNotFound(
        f"{field} {name!r} is an A1111 built-in whose weights A1111 would download now ({model_path}); this "
        f"worker never downloads while a job waits: {where} (docs/registry.md)",
        details={"missing": file_name},
    )
