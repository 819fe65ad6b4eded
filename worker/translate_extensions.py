"""Native ``controlnet``/``adetailer`` units → the ``alwayson_scripts`` entries the extensions take (pure).

The translation happens when the job is parsed, so everything after it sees one form: pre-flight
(``worker.preflight.scripts``), the control-image checks (``worker.input_images.script_images``) and the
post-check (``worker.extension_results``) run on the entries below exactly as on a peer's raw
``alwayson_scripts``. Only the names in their messages differ: ``native_location`` turns
``alwayson_scripts.controlnet.args[1].model`` back into ``controlnet[1].model``, the field the caller wrote.

* ControlNet (v1.1.455) takes one dict unit per argument. ``enabled`` is always sent: the extension's default
  is ``false``, so a unit without it would be skipped silently.
* ADetailer (v25.3.0) takes ``[enable, skip_img2img, {unit}, ...]`` with ``ad_``-prefixed fields. The unit
  slots after the job's are filled with ``{"ad_model": "None"}``: a slot the request leaves out keeps its UI
  default, and that default can be a detector (recorded: ``[{unit}]`` also ran ``mediapipe_face_full``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from worker.extension_units import ADetailerUnit, ControlNetUnit

#: the ``alwayson_scripts`` keys the native units are written under (A1111 matches them case-insensitively)
CONTROLNET_KEY = "controlnet"
ADETAILER_KEY = "ADetailer"
#: ADetailer's unit slots by default ("Max tabs", ``ad_max_models``); the job's units first, then empty ones
ADETAILER_SLOTS = 4
#: an ADetailer slot that does nothing (``ADetailerArgs.need_skip``)
EMPTY_ADETAILER_SLOT: dict[str, Any] = {"ad_model": "None"}
#: ``[enable, skip_img2img]`` before ADetailer's units
ADETAILER_LEAD = 2

#: ControlNet's fields, in the order they are sent (the native names are the extension's)
CONTROLNET_FIELDS: tuple[str, ...] = tuple(ControlNetUnit.model_fields)
#: always sent, even at their defaults (``enabled``: the extension's default is off)
CONTROLNET_ALWAYS = frozenset({"enabled", "module", "model"})

#: native ADetailer field → the UI switch that must be on for ADetailer to use it
ADETAILER_SWITCHES: dict[str, str] = {
    "inpaint_width": "ad_use_inpaint_width_height",
    "inpaint_height": "ad_use_inpaint_width_height",
    "steps": "ad_use_steps",
    "cfg_scale": "ad_use_cfg_scale",
    "checkpoint": "ad_use_checkpoint",
    "vae": "ad_use_vae",
    "sampler": "ad_use_sampler",
    "scheduler": "ad_use_sampler",
    "noise_multiplier": "ad_use_noise_multiplier",
    "clip_skip": "ad_use_clip_skip",
}
#: with a switch on, the partner fields the job left out keep the job's own value, not ADetailer's default
#: (``ad_sampler`` defaults to "DPM++ 2M Karras": a job giving only ``scheduler`` would change its sampler)
SWITCH_PARTNERS: dict[str, dict[str, Any]] = {"ad_use_sampler": {"ad_sampler": "Use same sampler"}}
ADETAILER_PREFIX = "ad_"


def controlnet_unit(unit: ControlNetUnit) -> dict[str, Any]:
    """One native unit as ControlNet's dict unit: its fields as set, the enums already the extension's."""
    return {
        name: getattr(unit, name)
        for name in CONTROLNET_FIELDS
        if name in CONTROLNET_ALWAYS or getattr(unit, name) is not None
    }


def adetailer_unit(unit: ADetailerUnit) -> dict[str, Any]:
    """One native unit as ADetailer's ``ad_`` dict, with the switches its values need."""
    given = {name: value for name, value in unit.model_dump().items() if value is not None}
    result = {ADETAILER_PREFIX + name: value for name, value in given.items()}
    for switch in sorted({ADETAILER_SWITCHES[name] for name in given if name in ADETAILER_SWITCHES}):
        result[switch] = True
        for partner, value in SWITCH_PARTNERS.get(switch, {}).items():
            result.setdefault(partner, value)
    return result


def adetailer_args(units: Sequence[ADetailerUnit]) -> list[Any]:
    """``[true, false, {unit}, ..., {"ad_model": "None"}, ...]``: enabled, not skipped in img2img."""
    slots = [adetailer_unit(unit) for unit in units]
    slots += [dict(EMPTY_ADETAILER_SLOT) for _ in range(ADETAILER_SLOTS - len(slots))]
    return [True, False, *slots]


def with_native_units(
    scripts: Mapping[str, Any] | None,
    controlnet: Sequence[ControlNetUnit] | None,
    adetailer: Sequence[ADetailerUnit] | None,
) -> dict[str, Any] | None:
    """The job's ``alwayson_scripts`` with the native units added; None when the job has none.

    Raises:
        ValueError: a native form and a raw entry for the same extension, naming both.
    """
    entries: dict[str, list[Any]] = {}
    if controlnet is not None:
        entries[CONTROLNET_KEY] = [controlnet_unit(unit) for unit in controlnet]
    if adetailer is not None:
        entries[ADETAILER_KEY] = adetailer_args(adetailer)
    if not entries:
        return None
    merged = dict(scripts or {})
    for key, args in entries.items():
        raw = next((name for name in merged if name.lower() == key.lower()), None)
        if raw is not None:
            native = key.lower()
            raise ValueError(
                f"{native} and alwayson_scripts.{raw} both give {key} units; send one of them (the native "
                f"{native} list or the raw alwayson_scripts.{raw} entry)"
            )
        merged[key] = {"args": args}
    return merged


_SCRIPT_PATH = re.compile(
    r"alwayson_scripts\.(?P<key>\w+)(?:\.args\[(?P<index>\d+)\])?(?P<field>\.\w+)?(?P<tail>.*)", re.DOTALL
)


def native_location(where: str, *, controlnet: bool, adetailer: bool) -> str:
    """A location in the translated ``alwayson_scripts`` as the caller wrote it: ``controlnet[1].image``,
    ``adetailer[0].model``. With ``controlnet``/``adetailer`` False (a raw entry) it stays as it is."""
    found = _SCRIPT_PATH.fullmatch(where)
    if found is None:
        return where
    key, index, field, tail = found.group("key", "index", "field", "tail")
    field = field or ""
    if controlnet and key == CONTROLNET_KEY:
        return f"controlnet{'' if index is None else f'[{index}]'}{field}{tail}"
    if adetailer and key == ADETAILER_KEY:
        if index is None or int(index) < ADETAILER_LEAD:
            return f"adetailer{tail}"
        name = field.removeprefix(f".{ADETAILER_PREFIX}").removeprefix(".")
        return f"adetailer[{int(index) - ADETAILER_LEAD}]{'.' + name if name else ''}{tail}"
    return where
