"""Pre-flight of ``alwayson_scripts``: every script a job names, and the models and preprocessors its
ControlNet and ADetailer units name, checked against this A1111 before generating.

A1111 refuses a script it does not have (HTTP 422), but the extensions themselves fail late or not at all:
an unknown ControlNet model is a 500 after the checkpoint ran, an ADetailer detector that is not installed is
skipped silently, and a unit in the wrong argument form is ignored (docs/extensions.md, measured on the real
thing). Here each of those is refused before anything is generated, naming the unit, the field and the
nearest valid names. Scripts the worker knows nothing about pass through when A1111 lists them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from worker.a1111.extensions import ADETAILER_SCRIPT, CONTROLNET_SCRIPT, ExtensionCatalog
from worker.compatibility import check_compatible
from worker.errors import InputInvalid, ModelIncompatible, ModelNotFound, excerpt
from worker.model_types import ModelFacts, ModelType
from worker.preflight.controlnet_annotators import check_annotator_weights
from worker.preflight.matching import key, nearest, not_found, stem

#: A1111's ``alwayson_scripts`` entry: ``{"args": [...]}`` (a missing ``args`` means none)
ARGS = "args"
#: the names ADetailer always lists besides its detector files (mediapipe's, built in)
NO_MODEL = "None"
#: ControlNet unit fields under their old names (v1.1.455 ``legacy_field_alias``): either spelling is taken,
#: both at once fail the request with HTTP 500 after the job was queued (recorded with the peers' payloads)
CONTROLNET_OLD_NAMES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image"}


class ScriptLists(Protocol):
    """The part of ``worker.a1111.client.A1111Client`` this check needs."""

    def extensions(self, *, refresh: bool = False) -> ExtensionCatalog: ...


@dataclass(frozen=True)
class ScriptContext:
    """What the job runs on: the endpoint (``txt2img``/``img2img``) and the checkpoint's facts;
    ``controlnet_facts`` is what the registry knows of a ControlNet by name (None: nothing); ``label`` names
    a location as the caller wrote it (``controlnet[0].model`` for a native unit: translate_extensions);
    ``provision`` brings a catalogue model the extension does not list onto the volume (the registry's
    download, as for checkpoints) and answers its facts, None when the registry knows no such model;
    ``annotators_dir`` is where ControlNet loads its preprocessors' weights from (None: not checked);
    ``engine_name`` is who lacks a script, as a refusal says it."""

    endpoint: str = "txt2img"
    checkpoint: ModelFacts | None = None
    controlnet_facts: Callable[[str], ModelFacts | None] = lambda _name: None
    label: Callable[[str], str] = lambda where: where
    provision: Callable[[ModelType, str], ModelFacts | None] = lambda _kind, _name: None
    annotators_dir: Path | None = None
    engine_name: str = "this A1111"


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

    def _refresh(self, *, force: bool = False) -> bool:
        """Refetch the lists once per job (a model may have just been copied onto the volume), and again
        after a download (``force``)."""
        if self._refreshed and not force:
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
                f"{self._at(where)}: {self._context.engine_name} has no {self._context.endpoint} script "
                f"{name!r} (extension not installed?); {hint}",
                details={"script": name, "available": list(available)},
            )
        args: list[Any] = entry.get(ARGS, [])
        if key(name) == CONTROLNET_SCRIPT:
            for index, unit in enumerate(args):
                self._controlnet_unit(f"{where}.args[{index}]", unit)
            self._controlnet_slots(where, args)
        elif key(name) == ADETAILER_SCRIPT:
            self._adetailer(where, args)

    # -- ControlNet ---------------------------------------------------------------------------------

    def _controlnet_slots(self, where: str, args: list[Any]) -> None:
        """A1111 passes ControlNet only as many units as it has slots (``control_net_unit_count``) and drops
        the rest without a word: an enabled unit past them would never run."""
        slots = self._catalog.controlnet_unit_count
        if slots is None or len(args) <= slots:
            return
        for index in range(slots, len(args)):
            unit = args[index]
            if isinstance(unit, dict) and unit.get("enabled") is not False:
                raise InputInvalid(
                    f"{self._at(f'{where}.args[{index}]')}: this ControlNet runs at most {slots} units "
                    f"(its control_net_unit_count setting); A1111 would drop unit {index} without running it",
                    details={"unit": self._at(f"{where}.args[{index}]"), "unit_count": slots},
                )

    def _controlnet_unit(self, where: str, unit: Any) -> None:
        if not isinstance(unit, dict):
            raise InputInvalid(
                f"{self._at(where)}: ControlNet units are objects "
                '({"enabled", "module", "model", "image", "weight", ...}); '
                f"got {type(unit).__name__} {excerpt(unit)}, which this ControlNet version ignores"
            )
        _check_old_names(where, unit)
        if "enabled" not in unit:
            # v1.1.455's units default to off: one without "enabled" is skipped silently (recorded)
            raise InputInvalid(
                f'{where}.enabled: missing; this ControlNet leaves a unit without "enabled": true off and '
                'generates without it; send "enabled": true',
                details={"unit": where},
            )
        if unit.get("enabled") is False:
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
        if found is None and model != NO_MODEL:
            found = self._provisioned_controlnet(where, model)
        titles = [t for t in self._catalog.controlnet_models or () if t != NO_MODEL]
        if found is None or found == NO_MODEL:
            message = not_found("ControlNet model", model, titles)
            details = {"unit": self._at(where), "available": titles}
            raise ModelNotFound(f"{self._at(where, 'model')}: {message}", details=details)
        return found

    def _provisioned_controlnet(self, where: str, model: str) -> str | None:
        """A catalogue ControlNet downloaded now; ControlNet rescans its folders on every listing, so the
        listing fetched after the download has it. The unit must name it as ControlNet does: by file."""
        facts = self._context.provision("controlnet", model)
        if facts is None:
            return None
        self._refresh(force=True)
        found = _controlnet_title(stem(facts.file_name), self._catalog.controlnet_models or ())
        if found is not None and key(_stem(found)) != key(_stem(model)):
            raise InputInvalid(
                f"{self._at(where, 'model')}: {model!r} is the ControlNet file {facts.file_name!r} (on the "
                f"volume); ControlNet finds models by file name: name it {_stem(found)!r}",
                details={"unit": self._at(where), "model": model, "file_name": facts.file_name},
            )
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
        if str(model) in models:
            return
        on_volume = self._context.provision("adetailer", str(model))
        if on_volume is not None:
            # ADetailer reads its folder once, when A1111 imports it: a detector added since (downloaded
            # now or copied in) is not used until A1111 restarts, and generating would skip the unit
            raise ModelNotFound(
                f"{self._at(where, 'ad_model')}: {model!r} is on the volume ({on_volume.file_name}) but this "
                "A1111 does not list it: ADetailer reads its detectors only when A1111 starts; restart the "
                "worker (a new worker picks it up)",
                details={"unit": self._at(where), "file_name": on_volume.file_name, "restart_required": True},
            )
        message = not_found("ADetailer model", str(model), list(models))
        raise ModelNotFound(
            f"{self._at(where, 'ad_model')}: {message} "
            "(ADetailer lists the detectors present when A1111 started)",
            details={"unit": self._at(where), "available": list(models)},
        )

    def _adetailer_fields(self, where: str, unit: dict[str, Any]) -> None:
        """ADetailer drops a whole unit with a field it does not know (its model forbids extras) or a value
        outside its bounds, and generates without it: a renamed field (``ad_mask_k_largest`` became
        ``ad_mask_k``) or ``ad_confidence: 30`` would silently do nothing."""
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
        for name, value in unit.items():
            broken = rule_broken(value, self._catalog.adetailer_field_rules.get(name, {}))
            if broken is not None:
                raise InputInvalid(
                    f"{self._at(where, name)}: {value!r} {broken} (ADetailer would skip the whole unit)",
                    details={"unit": self._at(where), "field": name},
                )


_BOUNDS: tuple[tuple[str, Callable[[float, float], bool], str], ...] = (
    ("minimum", operator.ge, "at least"),
    ("exclusiveMinimum", operator.gt, "more than"),
    ("maximum", operator.le, "at most"),
    ("exclusiveMaximum", operator.lt, "less than"),
)


def rule_broken(value: Any, rule: Mapping[str, Any]) -> str | None:
    """How ``value`` breaks a JSON-schema field ``rule`` (bounds of a number, an enum of strings), or None.

    Only what ADetailer's pydantic model would refuse for certain: values of another type are left to it
    (pydantic coerces ``"0.5"``)."""
    enum = rule.get("enum")
    if isinstance(value, str) and isinstance(enum, list) and value not in enum:
        return f"is not one of {', '.join(repr(choice) for choice in enum)}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    for name, within, words in _BOUNDS:
        limit = rule.get(name)
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and not within(value, limit):
            return f"is out of range: it must be {words} {limit:g}"
    return None


def _check_old_names(where: str, unit: dict[str, Any]) -> None:
    """A unit naming a field twice, under its old and its new name (``guidance`` and ``guidance_end``, as
    the peers' examples do), is refused by ControlNet with HTTP 500 whether enabled or not."""
    for old_name, name in CONTROLNET_OLD_NAMES.items():
        if old_name in unit and name in unit:
            raise InputInvalid(
                f"{where}: both {old_name!r} and {name!r}: ControlNet takes {old_name!r} as the old name "
                f"of {name!r} and refuses a unit with both (HTTP 500); send only {name!r}",
                details={"unit": where, "fields": [old_name, name]},
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
