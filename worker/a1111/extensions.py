"""What this A1111's scripts and extensions can take: its script lists and ControlNet's and ADetailer's own
listings, fetched once and kept until invalidated, so a job's ``alwayson_scripts`` are checked before
generating (``worker.preflight.scripts``). The one place that knows these routes.

An extension that is not installed has no routes (404): its lists are ``None``, which pre-flight reports as
"not installed" rather than as an empty list of models.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.errors import EngineFailed, InputInvalid

log = logging.getLogger(__name__)

#: A1111's own: ``{"txt2img": [...], "img2img": [...]}``, script titles in lower case (below /sdapi/v1/)
SCRIPTS = "scripts"
#: the extensions' routes, from the server root (sd-webui-controlnet ``scripts/api.py``, adetailer
#: ``scripts/!adetailer.py``)
CONTROLNET_MODELS = "/controlnet/model_list"
CONTROLNET_MODULES = "/controlnet/module_list"
#: the same list under the UI's labels (``depth_midas`` for ``depth``): a unit's ``module`` may be either
CONTROLNET_MODULE_LABELS = "/controlnet/module_list?alias_names=true"
#: ``{"control_net_unit_count": 3}``: how many units A1111 passes on (it drops the rest without a word)
CONTROLNET_SETTINGS = "/controlnet/settings"
ADETAILER_MODELS = "/adetailer/v1/ad_model"
#: the JSON schema of one ADetailer unit (its pydantic model, which forbids unknown fields)
ADETAILER_SCHEMA = "/adetailer/v1/schema"

#: the script names A1111 lists for each extension (``Script.title().lower()``)
CONTROLNET_SCRIPT = "controlnet"
ADETAILER_SCRIPT = "adetailer"


@dataclass(frozen=True)
class ExtensionCatalog:
    """The scripts a request may name and the extensions' models and preprocessors (None: not installed)."""

    scripts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # endpoint -> lower-case names
    controlnet_models: tuple[str, ...] | None = None  # "name [hash8]" titles, "None" first
    controlnet_modules: tuple[str, ...] | None = None
    adetailer_models: tuple[str, ...] | None = None  # file names and the built-in mediapipe names
    adetailer_fields: tuple[str, ...] | None = None  # the fields an ADetailer unit may have
    controlnet_unit_count: int | None = None  # the units A1111 passes on (None: not known)
    #: ADetailer's JSON schema of each field (bounds, enums), as its pydantic model checks them
    adetailer_field_rules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def script_names(self, endpoint: str) -> tuple[str, ...]:
        return self.scripts.get(endpoint, ())


def _names(data: Any, key: str, route: str) -> tuple[str, ...] | None:
    if data is None:
        return None
    values = data.get(key) if isinstance(data, dict) else None
    if not isinstance(values, list):
        raise EngineFailed(f"A1111 {route} returned no {key!r} list")
    return tuple(str(value) for value in values)


def parse_extension_catalog(read: Callable[[str], Any]) -> ExtensionCatalog:
    """Build the catalog from ``read(route)``: a route's JSON, ``None`` when the route does not exist."""
    scripts = read(SCRIPTS)
    if not isinstance(scripts, dict):
        raise EngineFailed("A1111 /sdapi/v1/scripts returned no object")
    by_endpoint = {
        endpoint: tuple(str(name).lower() for name in names if name)
        for endpoint, names in scripts.items()
        if isinstance(names, list)
    }
    controlnet = CONTROLNET_SCRIPT in by_endpoint.get("txt2img", ())
    adetailer = ADETAILER_SCRIPT in by_endpoint.get("txt2img", ())
    return ExtensionCatalog(
        scripts=by_endpoint,
        controlnet_models=_names(read(CONTROLNET_MODELS), "model_list", CONTROLNET_MODELS)
        if controlnet
        else None,
        controlnet_modules=_controlnet_modules(read) if controlnet else None,
        adetailer_models=_names(read(ADETAILER_MODELS), "ad_model", ADETAILER_MODELS) if adetailer else None,
        controlnet_unit_count=_unit_count(read(CONTROLNET_SETTINGS)) if controlnet else None,
        **(_adetailer_schema(read(ADETAILER_SCHEMA)) if adetailer else {}),
    )


def _controlnet_modules(read: Callable[[str], Any]) -> tuple[str, ...] | None:
    """The preprocessors' names, then the UI labels that differ: ControlNet finds a module by either."""
    names = _names(read(CONTROLNET_MODULES), "module_list", CONTROLNET_MODULES)
    labels = _names(read(CONTROLNET_MODULE_LABELS), "module_list", CONTROLNET_MODULE_LABELS) or ()
    return None if names is None else tuple(dict.fromkeys((*names, *labels)))


def _unit_count(settings: Any) -> int | None:
    count = settings.get("control_net_unit_count") if isinstance(settings, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None


def _adetailer_schema(schema: Any) -> dict[str, Any]:
    """``adetailer_fields`` and ``adetailer_field_rules`` from ADetailer's JSON schema of one unit."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    rules = {str(name): rule for name, rule in properties.items() if isinstance(rule, dict)}
    return {"adetailer_fields": tuple(str(name) for name in properties), "adetailer_field_rules": rules}


class ExtensionCatalogCache:
    """The extension catalog, fetched on first use and kept until ``invalidate()`` (a rescan).

    Args:
        get: GETs a route's JSON (``Transport.get``); a 404 arrives as ``InputInvalid`` and means "absent".
    """

    def __init__(self, get: Callable[[str], Any]) -> None:
        self._get = get
        self._catalog: ExtensionCatalog | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._catalog = None

    def get(self, *, refresh: bool = False) -> ExtensionCatalog:
        with self._lock:
            if self._catalog is not None and not refresh:
                return self._catalog
        catalog = parse_extension_catalog(self._read)
        with self._lock:
            self._catalog = catalog
        return catalog

    def _read(self, route: str) -> Any:
        try:
            return self._get(route)
        except InputInvalid as exc:
            if exc.details.get("status") == 404:
                log.info("A1111 has no %s route: its extension is not installed", route)
                return None
            raise EngineFailed(f"A1111 failed to list {route}: {exc.message}", details=exc.details) from exc
