"""What ControlNet and ADetailer add to an A1111 answer, for the fake A1111 (recorded on the real thing:
tests/fixtures/a1111/extensions.json).

Only when the fake lists the script (``FakeData.scripts``): ControlNet writes ``ControlNet <i>`` per enabled dict
unit and appends one detected map per unit to the images; ADetailer writes ``ADetailer model`` (``... 2nd``) per
unit with a model, and its version.
"""

from __future__ import annotations

from typing import Any

ADETAILER_VERSION = "25.3.0"
#: ADetailer's suffixes for its units (``aaaaaa/ui.py`` ``suffix``), as the real one writes them
SUFFIXES = ("", " 2nd", " 3rd", " 4th", " 5th")


def _args(body: dict[str, Any], script: str) -> list[Any]:
    for name, entry in (body.get("alwayson_scripts") or {}).items():
        if name.lower() == script and isinstance(entry, dict):
            return list(entry.get("args") or [])
    return []


def _controlnet_units(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [u for u in _args(body, "controlnet") if isinstance(u, dict) and bool(u.get("enabled", False))]


def _installed(scripts: dict[str, Any], name: str) -> bool:
    return name in [str(s).lower() for s in scripts.get("txt2img", [])]


def extension_params(scripts: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The infotext entries the installed extensions write for ``body``'s units."""
    params: dict[str, Any] = {}
    if _installed(scripts, "controlnet"):
        for index, unit in enumerate(_controlnet_units(body)):
            params[f"ControlNet {index}"] = (
                f"Module: {unit.get('module') or 'none'}, Model: {unit.get('model')}, "
                f"Weight: {float(unit.get('weight', 1.0))}, Resize Mode: {unit.get('resize_mode', 'Crop and Resize')}, "
                f"Control Mode: {unit.get('control_mode', 'Balanced')}"
            )
    if _installed(scripts, "adetailer"):
        args = _args(body, "adetailer")
        enabled = bool(args) and args[0] is not False
        units = (
            [u for u in args if isinstance(u, dict) and u.get("ad_model", "None") != "None"]
            if enabled
            else []
        )
        for index, unit in enumerate(units):
            params[f"ADetailer model{SUFFIXES[index]}"] = unit["ad_model"]
        if units:
            params["ADetailer version"] = ADETAILER_VERSION
    return params


def extension_images(
    scripts: dict[str, Any], body: dict[str, Any], size: dict[str, int]
) -> list[dict[str, int]]:
    """The detected maps ControlNet appends after the generated images."""
    if not _installed(scripts, "controlnet"):
        return []
    return [size for unit in _controlnet_units(body) if unit.get("save_detected_map", True) is not False]
