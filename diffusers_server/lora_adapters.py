"""LoRAs as diffusers adapters: loaded once per model (adapter = file stem), then a request's set active."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from worker.registry.conversions import ConversionFailed
from worker.registry.convert import kohya_from_lora
from worker.registry.keymaps import Component, lora_layout
from worker.registry.safetensors_header import read_header

from .errors import RequestRefused
from .models.files import LoraInfo

if TYPE_CHECKING:
    from .models.pipelines import LoadedModel

log = logging.getLogger(__name__)

#: a LoRA of a request and its text-encoder and UNet multipliers (``<lora:name:te:unet>``)
LoraUse = tuple[LoraInfo, float, float]


def same_loras(first: list[LoraUse], second: list[LoraUse]) -> bool:
    """Whether two passes run with the same LoRAs at the same weights (no adapter switch needed)."""
    return [(lo.name, te, unet) for lo, te, unet in first] == [(lo.name, te, unet) for lo, te, unet in second]


def apply_loras(model: LoadedModel, loras: list[LoraUse], work_dir: Path) -> None:
    """Load each LoRA once per model (adapter = file stem), then activate exactly this request's set."""
    pipe = model.pipe
    for lora, _, _ in loras:
        if lora.name not in model.loaded_loras:
            _load_adapter(model, lora, work_dir)
    if not model.loaded_loras:
        return
    if not loras:
        pipe.disable_lora()
        return
    pipe.enable_lora()
    weights = [{"unet": unet, "text_encoder": te, "text_encoder_2": te} for _, te, unet in loras]
    if model.kind == "sd15":
        weights = [{"unet": w["unet"], "text_encoder": w["text_encoder"]} for w in weights]
    pipe.set_adapters([lo.name for lo, _, _ in loras], adapter_weights=weights)


def _load_adapter(model: LoadedModel, lora: LoraInfo, work_dir: Path) -> None:
    pipe = model.pipe
    try:
        pipe.load_lora_weights(str(_kohya_file(lora, model, work_dir)), adapter_name=lora.name)
    except (ValueError, KeyError, RuntimeError) as exc:
        with contextlib.suppress(ValueError, KeyError):
            pipe.delete_adapters([lora.name])
        reason = str(exc).strip().splitlines()[0][:300]
        raise RequestRefused(
            400, f"LoRA {lora.name!r} does not fit checkpoint {model.path.name} ({model.kind}): {reason}"
        ) from exc
    model.loaded_loras.add(lora.name)


def _kohya_file(lora: LoraInfo, model: LoadedModel, work_dir: Path) -> Path:
    """A diffusers/PEFT-layout LoRA as the kohya file the registry's converter makes of it (cached).

    diffusers' own loader applies only part of some layouts it writes itself (the ``lora.down``
    keys of ``convert_state_dict_to_diffusers``) and skips a bare PEFT state, with a warning; the
    converted file is applied whole, exactly as A1111 applies the same conversion.
    """
    if lora.filename.suffix.lower() != ".safetensors":
        return lora.filename
    layout = lora_layout(read_header(lora.filename).tensors)
    if layout not in ("diffusers", "peft"):
        return lora.filename
    unet_config = dict(model.pipe.unet.config)
    st = lora.filename.stat()
    key = json.dumps(
        [str(lora.filename), st.st_size, st.st_mtime_ns, unet_config], sort_keys=True, default=str
    )
    target = work_dir / "loras" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    encoders: tuple[Component, ...] = ("text_encoder", "text_encoder_2")
    widths = dict(zip(encoders, model.text_widths, strict=False))
    try:
        kohya_from_lora([lora.filename], tmp, unet_config=unet_config, text_widths=widths)
    except ConversionFailed as exc:
        tmp.unlink(missing_ok=True)
        raise RequestRefused(
            400, f"LoRA {lora.name!r} cannot be applied to {model.path.name}: {exc.message}"
        ) from exc
    tmp.replace(target)
    log.info("LoRA %s (%s layout) applied through its kohya conversion", lora.name, layout)
    return target
