"""Pre-flight of ``alwayson_scripts``: every script a job names, and the models and preprocessors its
ControlNet and ADetailer units name, checked against this A1111 before generating.

A1111 refuses a script it does not have (HTTP 422), but the extensions themselves fail late or not at all:
an unknown ControlNet model is a 500 after the checkpoint ran, an ADetailer detector that is not installed is
skipped silently, and a unit in the wrong argument form is ignored (docs/extensions.md, measured on the real
thing). Here each of those is refused before anything is generated, naming the unit, the field and the
nearest valid names. Scripts the worker knows nothing about pass through when A1111 lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from worker.a1111.extensions import ADETAILER_SCRIPT, CONTROLNET_SCRIPT, ExtensionCatalog
from worker.compatibility import check_compatible
from worker.errors import InputInvalid, ModelIncompatible, ModelNotFound, excerpt
from worker.model_types import ModelFacts
from worker.preflight.controlnet_annotators import check_annotator_weights
from worker.preflight.matching import key, nearest, not_found

#: A1111's ``alwayson_scripts`` entry: ``{"args": [...]}`` (a missing ``args`` means none)
ARGS = "args"
#: the names ADetailer always lists besides its detector files (mediapipe's, built in)
NO_MODEL = "None"


class ScriptLists(Protocol):
    """The part of ``worker.a1111.client.A1111Client`` this check needs."""

    def extensions(self, *, refresh: bool = False) -> ExtensionCatalog: ...


@dataclass(frozen=True)
class ScriptContext:
    """What the job runs on: the endpoint (``txt2img``/``img2img``) and the checkpoint's facts;
    ``controlnet_facts`` is what the registry knows of a ControlNet by name (None: nothing); ``label`` names
    a location as the caller wrote it (``controlnet[0].model`` for a native unit: translate_extensions);
    ``annotators_dir`` is where ControlNet loads its preprocessors' weights from (None: not checked)."""

    endpoint: str = "txt2img"
    checkpoint: ModelFacts | None = None
    controlnet_facts: Callable[[str], ModelFacts | None] = lambda _name: None
    label: Callable[[str], str] = lambda where: where
    annotators_dir: Path | None = None


def check_alwayson_scripts(
    scripts: Mapping[str, Any] | None, engine: ScriptLists, context: ScriptContext
) -> list[str]:
    """Refuse what A1111 or an extension would fail on or silently ignore; returns warnings.

    Raises:
        InputInvalid: a script A1111 does not have, an argument form the extension does not take, an
            unknown preprocessor.
        ModelNotFound: a ControlNet model or ADetailer detector this A1111 does not list, a preprocessor
            whose annotator weights are not on the volume.
        ModelIncompatible: a ControlNet model built for another architecture than the checkpoint.
    """
    if not scripts:
        return []
    checker = _Checker(engine, context)
    for name, entry in scripts.items():
        checker.script(name, entry)
    return checker.warnings


class _Checker:
    def __init__(self, engine: ScriptLists, context: ScriptContext) -> None:
        self._engine = engine
        self._context = context
        self._catalog = engine.extensions()
        self._refreshed = False
        self.warnings: list[str] = []

    def _refresh(self) -> bool:
        """Refetch the lists once per job (a model may have just been copied onto the volume)."""
        if self._refreshed:
            return False
        self._refreshed = True
        self._catalog = self._engine.extensions(refresh=True)
        return True

    def _at(self, where: str, field: str = "") -> str:
        return self._context.label(f"{where}.{field}" if field else where)

    def script(self, name: str, entry: Any) -> None:
        where = f"alwayson_scripts.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get(ARGS, []), list):
            raise InputInvalid(f'{self._at(where)} must be an object {{"args": [...]}}, got {excerpt(entry)}')
        available = self._catalog.script_names(self._context.endpoint)
        if key(name) not in available:
            close = nearest(name, available)
            hint = f"nearest: {', '.join(close)}" if close else f"it has: {', '.join(available) or 'none'}"
            raise InputInvalid(
                f"{self._at(where)}: this A1111 has no {self._context.endpoint} script {name!r} "
                f"(extension not installed?); {hint}",
                details={"script": name, "available": list(available)},
            )
        args: list[Any] = entry.get(ARGS, [])
        if key(name) == CONTROLNET_SCRIPT:
            for index, unit in enumerate(args):
                self._controlnet_unit(f"{where}.args[{index}]", unit)
        elif key(name) == ADETAILER_SCRIPT:
            self._adetailer(where, args)

    # -- ControlNet ---------------------------------------------------------------------------------

    def _controlnet_unit(self, where: str, unit: Any) -> None:
        if not isinstance(unit, dict):
            raise InputInvalid(
                f"{self._at(where)}: ControlNet units are objects "
                '({"enabled", "module", "model", "image", "weight", ...}); '
                f"got {type(unit).__name__} {excerpt(unit)}, which this ControlNet version ignores"
            )
        if unit.get("enabled", True) is False:
            return
        module = str(unit.get("module") or "none")
        modules = self._catalog.controlnet_modules or ()
        if module not in modules:
            raise InputInvalid(
                f"{self._at(where, 'module')}: {not_found('ControlNet preprocessor', module, list(modules))}"
            )
        if self._context.annotators_dir is not None:
            check_annotator_weights(self._at(where, "module"), module, self._context.annotators_dir)
        model = str(unit.get("model") or NO_MODEL)
        title = self._controlnet_model(where, model)
        self._compatible(where, title)
        if self._context.endpoint == "txt2img" and not (unit.get("image") or unit.get("input_image")):
            # img2img falls back to the init image; txt2img has none, and ControlNet skips the unit (recorded)
            raise InputInvalid(
                f"{self._at(where, 'image')}: a txt2img ControlNet unit needs a control image (base64)"
            )

    def _controlnet_model(self, where: str, model: str) -> str:
        found = _controlnet_title(model, self._catalog.controlnet_models or ())
        if found is None and self._refresh():
            found = _controlnet_title(model, self._catalog.controlnet_models or ())
        titles = [t for t in self._catalog.controlnet_models or () if t != NO_MODEL]
        if found is None or found == NO_MODEL:
            message = not_found("ControlNet model", model, titles)
            details = {"unit": self._at(where), "available": titles}
            raise ModelNotFound(f"{self._at(where, 'model')}: {message}", details=details)
        return found

    def _compatible(self, where: str, title: str) -> None:
        """The one compatibility rule (``worker.compatibility``): unknown architectures pass."""
        checkpoint, facts = self._context.checkpoint, self._context.controlnet_facts(_stem(title))
        if checkpoint is None or facts is None:
            return
        try:
            check_compatible(checkpoint, [facts])
        except ModelIncompatible as exc:
            details = {**exc.details, "unit": self._at(where)}
            raise ModelIncompatible(f"{self._at(where, 'model')}: {exc.message}", details=details) from exc

    # -- ADetailer ----------------------------------------------------------------------------------

    def _adetailer(self, where: str, args: list[Any]) -> None:
        """``[enable, skip_img2img, {unit}, ...]`` as the peers send it. ADetailer v25 itself takes every
        object as a unit and a leading boolean as the switch (recorded: ``[{unit}, true, false]`` runs) and
        ignores anything else silently: a stray value or an enabled ADetailer without a unit is refused."""
        if not args or args[0] is False:
            return
        for index, value in enumerate(args):
            if not isinstance(value, (bool, dict)):
                raise InputInvalid(
                    f"{where}.args[{index}]: ADetailer takes [enable: bool, skip_img2img: bool, {{unit}}, "
                    f"...]; got {excerpt(value)}, which it would ignore"
                )
        if len(args) < 3:
            # the slots not sent keep ADetailer's UI defaults, and the third is an enabled unit (recorded:
            # [{unit}] also runs mediapipe_face_full)
            raise InputInvalid(
                f"{where}.args: with fewer than 3 arguments ADetailer also runs its default first unit; "
                "send [true, false, {unit}, ...]"
            )
        units = [(index, value) for index, value in enumerate(args) if isinstance(value, dict)]
        if not units:
            raise InputInvalid(
                f"{where}.args: ADetailer is enabled but has no unit ({{'ad_model': ...}}): "
                "it would do nothing"
            )
        for index, unit in units:
            self._adetailer_unit(f"{where}.args[{index}]", unit)

    def _adetailer_unit(self, where: str, unit: dict[str, Any]) -> None:
        self._adetailer_fields(where, unit)
        model = unit.get("ad_model")
        if model is None or model == NO_MODEL:
            return
        models = self._catalog.adetailer_models or ()
        if str(model) not in models:
            message = not_found("ADetailer model", str(model), list(models))
            raise ModelNotFound(
                f"{self._at(where, 'ad_model')}: {message} "
                "(ADetailer lists the detectors present when A1111 started)",
                details={"unit": self._at(where), "available": list(models)},
            )

    def _adetailer_fields(self, where: str, unit: dict[str, Any]) -> None:
        """ADetailer drops a whole unit with a field it does not know (its model forbids extras) and generates
        without it: a renamed field (``ad_mask_k_largest`` became ``ad_mask_k``) would silently do nothing."""
        fields = self._catalog.adetailer_fields
        unknown = sorted(set(unit) - set(fields)) if fields else []
        if unknown:
            close = nearest(unknown[0], fields or ())
            hint = f"; nearest: {', '.join(close)}" if close else ""
            raise InputInvalid(
                f"{self._at(where, unknown[0])}: ADetailer has no field {unknown[0]!r}{hint} "
                "(it would skip the whole unit)",
                details={"unit": self._at(where), "unknown": unknown},
            )


def _stem(title: str) -> str:
    """``control_v11p_sd15_canny [d14c016b]`` → ``control_v11p_sd15_canny``."""
    return title.rsplit(" [", 1)[0] if title.endswith("]") else title


def _controlnet_title(model: str, titles: tuple[str, ...]) -> str | None:
    """The listed title a unit's ``model`` means: the title itself, or its name without the hash."""
    if model in titles:
        return model
    wanted = key(_stem(model))
    return next((title for title in titles if key(_stem(title)) == wanted), None)
