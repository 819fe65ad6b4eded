"""What A1111 reports about the extension units a job asked for, held against what it asked (post-check).

ControlNet writes one ``ControlNet <i>`` entry per enabled unit into the infotext (``"Module: canny, Model:
control_v11p_sd15_canny, Weight: 1.0, ..."``) and appends one detected map per enabled unit to the images
(unless the unit says ``save_detected_map: false``); ADetailer writes ``ADetailer model`` (``... 2nd``,
``... 3rd``) for each unit it accepted. A unit missing from that report was dropped by the extension, and the
job fails as ``engine_error`` naming it (docs/extensions.md). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CONTROLNET = "controlnet"
ADETAILER = "adetailer"


def _script_args(payload: Mapping[str, Any], script: str) -> list[Any]:
    for name, entry in (payload.get("alwayson_scripts") or {}).items():
        if str(name).lower() == script and isinstance(entry, dict) and isinstance(entry.get("args"), list):
            return list(entry["args"])
    return []


def controlnet_units(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The enabled ControlNet units, in order (the extension numbers them from 0 in this order); a unit
    without ``enabled`` is off (v1.1.455's default)."""
    units = _script_args(payload, CONTROLNET)
    return [u for u in units if isinstance(u, dict) and bool(u.get("enabled", False))]


def adetailer_units(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ADetailer units that will run: none when ADetailer is disabled (``[false, ...]``)."""
    args = _script_args(payload, ADETAILER)
    if not args or args[0] is False:
        return []
    return [u for u in args if isinstance(u, dict) and u.get("ad_model", "None") != "None"]


def control_maps(payload: Mapping[str, Any]) -> int:
    """How many images ControlNet adds to the answer: one detected map per enabled unit that saves it."""
    return sum(1 for unit in controlnet_units(payload) if unit.get("save_detected_map", True) is not False)


def ordinal_suffix(n: int) -> str:
    """ADetailer's infotext suffix for its n-th unit (0-based): "", " 2nd", " 3rd", " 4th", ..."""
    if n == 0:
        return ""
    number = n + 1
    ending = "th" if 11 <= number % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f" {number}{ending}"


def extension_problems(payload: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """Each unit the job asked for that the infotext (``extra_generation_params``) does not report."""
    problems = []
    for index, unit in enumerate(controlnet_units(payload)):
        reported = str(params.get(f"ControlNet {index}", ""))
        wanted = f"Module: {unit.get('module') or 'none'}, Model: "
        if not reported.startswith(wanted):
            what = f"{unit.get('module')}, {unit.get('model')}"
            problems.append(f"ControlNet unit {index} ({what}) was not applied")
    for index, unit in enumerate(adetailer_units(payload)):
        if params.get(f"ADetailer model{ordinal_suffix(index)}") != unit.get("ad_model"):
            problems.append(f"ADetailer unit {index + 1} ({unit.get('ad_model')}) was not applied")
    return problems


def check_extensions(
    payload: Mapping[str, Any], images: Sequence[Any], info: Mapping[str, Any]
) -> tuple[Sequence[Any], list[str]]:
    """(the generated images without ControlNet's detected maps, what was dropped).

    The maps come last and only when ControlNet ran: with none of them back, its units were not applied.
    """
    params = info.get("extra_generation_params") or {}
    problems = extension_problems(payload, params if isinstance(params, Mapping) else {})
    maps = control_maps(payload)
    generated = int(payload.get("batch_size") or 1) * int(payload.get("n_iter") or 1)
    if not maps or not payload.get("send_images", True):
        return images, problems
    if len(images) == generated + maps:
        return images[:generated], problems
    if len(images) == generated:
        problems.append(f"ControlNet returned no detected maps (expected {maps}): its units were not applied")
    return images[:generated], problems
