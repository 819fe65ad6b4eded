"""Pre-flight: every name a job uses, checked against the engine's own lists before generating.

A1111 silently replaces an unknown checkpoint or sampler and silently skips an unknown LoRA. Here a
name that neither the engine nor the registry knows fails the job with the nearest valid names, and
nothing is sent to txt2img. A miss refreshes the engine's lists once (a file may have just been
copied onto the volume), and a catalogue model that is not on disk yet is provisioned through the
registry first.

The matching functions are pure (tested table-driven); ``Preflight`` adds the engine round trips.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Protocol, TypeVar

from worker.a1111.catalog import CheckpointEntry, EngineCatalog, LoraEntry, SamplerEntry, SchedulerEntry
from worker.a1111.endpoints import RefreshKind
from worker.compatibility import check_compatible
from worker.errors import EngineFailed, InputInvalid, ModelNotFound, excerpt
from worker.model_types import ModelFacts, ModelKind, ModelProvider
from worker.schema import Txt2ImgJob
from worker.translate import ResolvedNames, prompt_lora_tags

log = logging.getLogger(__name__)

DEFAULT_SAMPLER = "Euler"  # what A1111's API uses when no sampler is sent (sampler_index default)
VAE_SPECIAL = ("Automatic", "None")
FoundT = TypeVar("FoundT")
_REFRESH_KIND: dict[ModelKind, RefreshKind] = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "embedding": "embeddings",
    "vae": "vae",
}


# --- pure matching ---------------------------------------------------------------------------


def _key(text: str) -> str:
    return text.strip().lower()


def _stem(path: str) -> str:
    return PurePath(path.replace("\\", "/")).stem


def checkpoint_aliases(entry: CheckpointEntry) -> set[str]:
    """Every spelling A1111 accepts for a checkpoint (a1111-api.md §6.2), lower-cased."""
    name = checkpoint_file(entry)
    aliases = {entry.title, name, _stem(name), entry.model_name, PurePath(entry.filename).name}
    aliases.add(_stem(entry.filename))
    for digest in (entry.hash, entry.sha256):
        if digest:
            aliases.add(digest)
    if entry.sha256:
        aliases.add(entry.sha256[:10])
    return {_key(alias) for alias in aliases if alias}


def _checkpoint_table(checkpoints: Iterable[CheckpointEntry]) -> dict[str, CheckpointEntry]:
    """Every alias → the first checkpoint (in the engine's order) that has it."""
    table: dict[str, CheckpointEntry] = {}
    for entry in checkpoints:
        for alias in checkpoint_aliases(entry):
            table.setdefault(alias, entry)
    return table


def match_checkpoint(
    ref: str, checkpoints: Iterable[CheckpointEntry], table: dict[str, CheckpointEntry] | None = None
) -> CheckpointEntry | None:
    """The first checkpoint with ``ref`` among its aliases; a prebuilt ``table`` makes it O(1)."""
    return (table if table is not None else _checkpoint_table(checkpoints)).get(_key(ref))


def _lora_tables(loras: Iterable[LoraEntry]) -> tuple[dict[str, LoraEntry], dict[str, LoraEntry]]:
    """(name or file stem → first entry, alias → first entry), in the engine's order."""
    by_name: dict[str, LoraEntry] = {}
    by_alias: dict[str, LoraEntry] = {}
    for entry in loras:
        by_name.setdefault(_key(entry.name), entry)
        by_name.setdefault(_key(_stem(entry.path)), entry)
        by_alias.setdefault(_key(entry.alias), entry)
    return by_name, by_alias


def match_lora(
    ref: str,
    loras: Iterable[LoraEntry],
    tables: tuple[dict[str, LoraEntry], dict[str, LoraEntry]] | None = None,
) -> LoraEntry | None:
    """By file stem first (always unique to A1111), then by alias (``ss_output_name``)."""
    by_name, by_alias = tables if tables is not None else _lora_tables(loras)
    wanted = _key(ref)
    return by_name.get(wanted) or by_alias.get(wanted)


def _memo(catalog: EngineCatalog, name: str, build: Callable[[], FoundT]) -> FoundT:
    """A lookup table built once per catalog: a job's cost does not grow with the engine's lists."""
    if name not in catalog.memo:
        catalog.memo[name] = build()
    table: FoundT = catalog.memo[name]
    return table


def match_name(ref: str, names: Iterable[str]) -> str | None:
    wanted = _key(ref)
    return next((name for name in names if _key(name) == wanted), None)


def match_scheduler(ref: str, schedulers: Iterable[SchedulerEntry]) -> SchedulerEntry | None:
    wanted = _key(ref)
    for entry in schedulers:
        if wanted in {_key(entry.name), _key(entry.label), *(_key(alias) for alias in entry.aliases)}:
            return entry
    return None


def _match_sampler_only(ref: str, samplers: Iterable[SamplerEntry]) -> SamplerEntry | None:
    wanted = _key(ref)
    for entry in samplers:
        if wanted == _key(entry.name) or wanted in {_key(alias) for alias in entry.aliases}:
            return entry
    return None


def match_sampler(
    ref: str, samplers: Iterable[SamplerEntry], schedulers: Iterable[SchedulerEntry]
) -> tuple[SamplerEntry, SchedulerEntry | None] | None:
    """A sampler name or alias, or a combined name such as ``"DPM++ 2M Karras"`` → (sampler, scheduler)."""
    samplers, schedulers = list(samplers), list(schedulers)
    exact = _match_sampler_only(ref, samplers)
    if exact is not None:
        return exact, None
    spellings = sorted(
        ((spelling, entry) for entry in schedulers for spelling in (entry.label, entry.name, *entry.aliases)),
        key=lambda item: -len(item[0]),
    )
    text = ref.strip()
    for spelling, scheduler in spellings:
        if len(text) > len(spelling) and _key(text).endswith(" " + _key(spelling)):
            base = _match_sampler_only(text[: -len(spelling)].strip(), samplers)
            if base is not None:
                return base, scheduler
    return None


def nearest(ref: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The closest candidates to ``ref``, case-insensitively, in their own spelling."""
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(_key(candidate), candidate)
    return [by_key[k] for k in difflib.get_close_matches(_key(ref), list(by_key), n=n, cutoff=0.4)]


def _choices(kind: str, ref: str, candidates: list[str]) -> str:
    close = nearest(ref, candidates)
    if close:
        return f"{kind} {excerpt(ref)} not found; nearest: {', '.join(close)}"
    listed = ", ".join(candidates[:20]) or "none"
    return f"{kind} {excerpt(ref)} not found; available: {listed}"


# --- the engine round trips -------------------------------------------------------------------


class EngineLists(Protocol):
    """The part of ``worker.a1111.client.A1111Client`` that pre-flight needs."""

    def catalog(self, *, refresh: bool = False) -> EngineCatalog: ...

    def refresh(self, kind: RefreshKind) -> None: ...


@dataclass
class PreflightResult:
    names: ResolvedNames
    models: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    provision_ms: float = 0.0
    downloaded: list[str] = field(default_factory=list)


class Preflight:
    """Resolves one job's names; a fresh instance per job (it remembers which lists it refreshed)."""

    def __init__(
        self, engine: EngineLists, provider: ModelProvider | None = None, *, engine_kind: str = "a1111"
    ) -> None:
        self._engine = engine
        self._provider = provider
        #: ``a1111`` or ``embedded``: decides which model layouts need a conversion first
        self._engine_kind = engine_kind
        self._catalog = engine.catalog()
        self._refreshed: set[ModelKind] = set()
        self._lists_refetched = False
        self._base: str | None = None
        self._lora_renames: dict[str, str] = {}
        self._described: dict[tuple[ModelKind, str], ModelFacts | None] = {}
        self._conversion_warnings: list[str] = []
        self.provision_ms = 0.0
        self.downloaded: list[str] = []

    def resolve(self, job: Txt2ImgJob) -> PreflightResult:
        warnings: list[str] = []
        overrides = job.override_settings or {}
        checkpoint_ref = _agreeing("checkpoint", job.checkpoint, overrides.get("sd_model_checkpoint"))
        vae_ref = _agreeing("vae", job.vae, overrides.get("sd_vae"))
        clip_override = overrides.get("CLIP_stop_at_last_layers")
        if job.clip_skip is not None and clip_override is not None and clip_override != job.clip_skip:
            raise InputInvalid(
                f"conflicting values for clip_skip: clip_skip={job.clip_skip!r}, "
                f"override_settings.CLIP_stop_at_last_layers={excerpt(clip_override)}; give one of them"
            )

        checkpoint = self._checkpoint(checkpoint_ref) if checkpoint_ref else None
        self._base = self._base_checkpoint(checkpoint)
        sampler, scheduler = self._sampler(job.sampler or DEFAULT_SAMPLER, job.scheduler, "sampler")
        loras = tuple(self._native_lora(ref.name, ref.weight) for ref in job.loras)
        tagged: list[tuple[LoraEntry, float]] = []
        for text in (job.prompt, job.negative_prompt, job.hr_prompt, job.hires and job.hires.prompt):
            for tag_name, weight_text in prompt_lora_tags(text or "").items():
                entry = self._lora(tag_name)
                if tag_name not in (entry.name, entry.alias):
                    shown = excerpt(tag_name)[1:-1]
                    raise InputInvalid(
                        f"LoRA tag <lora:{shown}:…> differs from the engine's name {entry.name!r} "
                        "(A1111 matches LoRA names case-sensitively); write it as the engine does"
                    )
                tagged.append((self._usable_lora(entry), _tag_weight(weight_text)))
        vae = self._vae(vae_ref) if vae_ref else None

        hires = job.hires
        hr_sampler_ref = hires.sampler if hires else job.hr_sampler_name
        hr_scheduler_ref = hires.scheduler if hires else job.hr_scheduler
        hr_sampler = hr_scheduler = None
        if hr_sampler_ref:
            hr_sampler, hr_scheduler = self._sampler(hr_sampler_ref, hr_scheduler_ref, "hires sampler")
        elif hr_scheduler_ref:
            hr_scheduler = self._scheduler(hr_scheduler_ref)
        hr_upscaler_ref = hires.upscaler if hires else job.hr_upscaler
        hr_checkpoint_ref = hires.checkpoint if hires else job.hr_checkpoint_name
        hr_checkpoint = self._optional_checkpoint(hr_checkpoint_ref, "Use same checkpoint")
        refiner = self._optional_checkpoint(job.refiner_checkpoint, "None")

        names = ResolvedNames(
            sampler=sampler,
            scheduler=scheduler,
            checkpoint_title=checkpoint.title if checkpoint else None,
            vae=vae,
            loras=tuple((entry.name, weight) for entry, weight in loras),
            hr_sampler=hr_sampler,
            hr_scheduler=hr_scheduler,
            hr_checkpoint_title=hr_checkpoint,
            hr_upscaler=self._upscaler(hr_upscaler_ref) if hr_upscaler_ref else None,
            refiner_checkpoint_title=refiner,
            lora_renames=tuple(self._lora_renames.items()),
        )
        models = self._models_used(checkpoint, loras + tuple(tagged), vae)
        if self.downloaded:
            warnings.append(f"downloaded before generating: {', '.join(self.downloaded)}")
        warnings += self._conversion_warnings
        return PreflightResult(
            names=names,
            models=models,
            warnings=warnings,
            provision_ms=self.provision_ms,
            downloaded=self.downloaded,
        )

    # --- per kind -------------------------------------------------------------------------

    def _checkpoint(self, ref: str) -> CheckpointEntry:
        def find(text: str) -> CheckpointEntry | None:
            catalog = self._catalog
            table = _memo(catalog, "checkpoints", lambda: _checkpoint_table(catalog.checkpoints))
            return match_checkpoint(text, catalog.checkpoints, table)

        entry = self._find_model("checkpoint", ref, find)
        if entry is None:
            candidates = [c.title for c in self._catalog.checkpoints]
            raise ModelNotFound(_choices("checkpoint", ref, candidates))
        return self._usable_checkpoint(entry)

    def _usable_checkpoint(self, entry: CheckpointEntry) -> CheckpointEntry:
        """The engine's checkpoint, or its converted twin when this engine cannot load it as it is."""
        facts = self._describe("checkpoint", checkpoint_file(entry))
        if facts is None:
            return entry
        usable = self._usable("checkpoint", facts)
        if usable.file_name == facts.file_name:
            return entry
        converted = match_checkpoint(usable.file_name, self._catalog.checkpoints)
        if converted is None:
            raise EngineFailed(
                f"checkpoint {usable.file_name!r} was converted on the volume but the engine does not list "
                "it even after a refresh; check the engine's checkpoint folder"
            )
        return converted

    def _optional_checkpoint(self, ref: str | None, keep_word: str) -> str | None:
        if not ref or _key(ref) in {_key(keep_word), "none", ""}:
            return ref
        return self._checkpoint(ref).title

    def _lora(self, ref: str) -> LoraEntry:
        def find(text: str) -> LoraEntry | None:
            catalog = self._catalog
            return match_lora(
                text, catalog.loras, _memo(catalog, "loras", lambda: _lora_tables(catalog.loras))
            )

        entry = self._find_model("lora", ref, find)
        if entry is None:
            raise ModelNotFound(_choices("LoRA", ref, [lora.name for lora in self._catalog.loras]))
        return entry

    def _native_lora(self, ref: str, weight: float | None) -> tuple[LoraEntry, float]:
        entry = self._usable_lora(self._lora(ref))
        if weight is None:
            facts = self._describe("lora", entry.name)
            weight = facts.default_weight if facts and facts.default_weight is not None else 1.0
        return entry, weight

    def _vae(self, ref: str) -> str:
        special = match_name(ref, VAE_SPECIAL)
        if special:
            return special

        def find(text: str) -> str | None:
            return match_name(text, self._catalog.vaes) or match_name(
                text, [_stem(v) for v in self._catalog.vaes]
            )

        found = self._find_model("vae", ref, find)
        if found is None:
            raise ModelNotFound(_choices("VAE", ref, [*VAE_SPECIAL, *self._catalog.vaes]))
        # A stem match must be sent as the engine's full name.
        return match_name(found, self._catalog.vaes) or next(
            v for v in self._catalog.vaes if _key(_stem(v)) == _key(found)
        )

    def _sampler(self, ref: str, scheduler_ref: str | None, what: str) -> tuple[str, str | None]:
        found = match_sampler(ref, self._catalog.samplers, self._catalog.schedulers)
        if found is None and self._refetch_lists():
            found = match_sampler(ref, self._catalog.samplers, self._catalog.schedulers)
        if found is None:
            candidates = [s.name for s in self._catalog.samplers]
            raise InputInvalid(
                f"{_choices(what, ref, candidates)}; valid samplers: {', '.join(candidates)} "
                "(a scheduler suffix such as ' Karras' is accepted)"
            )
        sampler, suffix = found
        scheduler = self._scheduler(scheduler_ref) if scheduler_ref else None
        if suffix is not None and scheduler is not None and _key(scheduler) != _key(suffix.label):
            raise InputInvalid(
                f"conflicting values for scheduler: {what} {excerpt(ref)} implies {suffix.label!r} "
                f"but scheduler={excerpt(scheduler_ref)}; give one of them"
            )
        return sampler.name, scheduler or (suffix.label if suffix else None)

    def _scheduler(self, ref: str) -> str:
        found = match_scheduler(ref, self._catalog.schedulers)
        if found is None and self._refetch_lists():
            found = match_scheduler(ref, self._catalog.schedulers)
        if found is None:
            labels = [s.label for s in self._catalog.schedulers]
            raise InputInvalid(f"{_choices('scheduler', ref, labels)}; valid schedulers: {', '.join(labels)}")
        return found.label

    def _upscaler(self, ref: str) -> str:
        found = match_name(ref, self._catalog.upscalers)
        if found is None and self._refetch_lists():
            found = match_name(ref, self._catalog.upscalers)
        if found is None:
            raise InputInvalid(
                f"{_choices('hires upscaler', ref, list(self._catalog.upscalers))}; "
                f"valid: {', '.join(self._catalog.upscalers)}"
            )
        return found

    # --- shared lookup with refresh and provisioning ----------------------------------------

    def _find_model(self, kind: ModelKind, ref: str, find: Callable[[str], FoundT | None]) -> FoundT | None:
        """Engine lists, then the registry's local knowledge, then a download, then one refresh."""
        found = find(ref)
        if found is not None:
            return found
        if self._provider is not None:
            facts = self._provider.describe(kind, ref)
            if facts is None:
                started = time.perf_counter()
                provisioned = self._provider.provision(kind, ref)
                self.provision_ms += (time.perf_counter() - started) * 1000
                if provisioned is not None:
                    facts = provisioned.facts
                    if provisioned.downloaded:
                        self.downloaded.append(f"{kind}:{facts.file_name}")
            if facts is not None:
                facts = self._usable(kind, facts)
                found = find(facts.file_name) or find(_stem(facts.file_name))
                if found is None:
                    self._refresh(kind)
                    found = find(facts.file_name) or find(_stem(facts.file_name))
                if found is None:
                    raise EngineFailed(
                        f"{kind} {facts.file_name!r} is on the volume but the engine does not list it "
                        "even after a refresh; check the engine's model folders"
                    )
                return found
        self._refresh(kind)
        return find(ref)

    def _usable(self, kind: ModelKind, facts: ModelFacts) -> ModelFacts:
        """``facts``, or those of its conversion when this engine cannot use the model as it is."""
        if self._provider is None or facts.usable_by is None or self._engine_kind in facts.usable_by:
            return facts
        started = time.perf_counter()
        provisioned = self._provider.convert_for(kind, facts.file_name, self._engine_kind, base=self._base)
        seconds = time.perf_counter() - started
        self.provision_ms += seconds * 1000
        if provisioned.converted_from is not None and provisioned.facts.file_name != facts.file_name:
            done = f"in {seconds:.1f} s" if provisioned.converted_now else "earlier"
            self._conversion_warnings.append(
                f"{kind} {facts.file_name} ({facts.layout or facts.format} layout) cannot be used by "
                f"{self._engine_kind} as it is: using {provisioned.facts.file_name}, converted {done}"
            )
            if not self._listed(kind, provisioned.facts.file_name):
                self._refresh(kind, force=True)  # a file converted after the engine's last listing
        return provisioned.facts

    def _listed(self, kind: ModelKind, file_name: str) -> bool:
        if kind == "lora":
            return match_lora(_stem(file_name), self._catalog.loras) is not None
        return kind == "checkpoint" and match_checkpoint(file_name, self._catalog.checkpoints) is not None

    def _usable_lora(self, entry: LoraEntry) -> LoraEntry:
        """The engine's LoRA, or its converted twin when the engine would skip this layout silently."""
        if entry.name in self._lora_renames:
            return match_lora(self._lora_renames[entry.name], self._catalog.loras) or entry
        facts = self._describe("lora", entry.name)
        if facts is None:
            return entry
        usable = self._usable("lora", facts)
        if usable.file_name == facts.file_name:
            return entry
        converted = match_lora(_stem(usable.file_name), self._catalog.loras)
        if converted is None:
            raise EngineFailed(
                f"LoRA {usable.file_name!r} was converted on the volume but the engine does not list it "
                "even after a refresh; check the engine's LoRA folder"
            )
        self._lora_renames[entry.name] = converted.name
        return converted

    def _base_checkpoint(self, checkpoint: CheckpointEntry | None) -> str | None:
        """The checkpoint file the job runs on (a LoRA's conversion follows its block layout)."""
        if checkpoint is None and self._catalog.current_checkpoint:
            checkpoint = match_checkpoint(self._catalog.current_checkpoint, self._catalog.checkpoints)
        return checkpoint_file(checkpoint) if checkpoint else None

    def _refresh(self, kind: ModelKind, *, force: bool = False) -> None:
        if kind in self._refreshed and not force:
            return
        self._refreshed.add(kind)
        log.info("refreshing the engine's %s list after a miss", kind)
        self._engine.refresh(_REFRESH_KIND[kind])
        self._catalog = self._engine.catalog(refresh=True)

    def _refetch_lists(self) -> bool:
        """Samplers, schedulers and upscalers: re-read the lists once per job on a miss."""
        if self._lists_refetched:
            return False
        self._lists_refetched = True
        self._catalog = self._engine.catalog(refresh=True)
        return True

    def _describe(self, kind: ModelKind, ref: str) -> ModelFacts | None:
        """The registry's facts, asked once per job and name (each ask reads the registry file)."""
        if self._provider is None:
            return None
        key = (kind, ref)
        if key not in self._described:
            self._described[key] = self._provider.describe(kind, ref)
        return self._described[key]

    def _models_used(
        self,
        checkpoint: CheckpointEntry | None,
        loras: tuple[tuple[LoraEntry, float], ...],
        vae: str | None,
    ) -> dict[str, Any]:
        """What the job will use, with hashes, for the output's ``models``; refuses mismatched add-ons."""
        if checkpoint is None:
            current = self._catalog.current_checkpoint
            catalog = self._catalog
            table = _memo(catalog, "checkpoints", lambda: _checkpoint_table(catalog.checkpoints))
            checkpoint = match_checkpoint(current, catalog.checkpoints, table) if current else None
        checkpoint_facts = self._describe("checkpoint", checkpoint_file(checkpoint)) if checkpoint else None
        if vae is not None and vae not in VAE_SPECIAL:
            self._describe("vae", vae)  # an unusable file (e.g. a link out of the volume) is refused here too
        lora_facts = [self._describe("lora", entry.name) for entry, _ in loras]
        if checkpoint_facts is not None:
            check_compatible(checkpoint_facts, [facts for facts in lora_facts if facts is not None])
        models: dict[str, Any] = {"checkpoint": None, "loras": [], "vae": vae}
        if checkpoint is not None:
            sha256 = checkpoint.sha256 or (checkpoint_facts.sha256 if checkpoint_facts else None)
            models["checkpoint"] = {
                "title": checkpoint.title,
                "sha256": sha256,
                "short_hash": sha256[:10] if sha256 else None,
                "architecture": checkpoint_facts.architecture if checkpoint_facts else None,
            }
        for (entry, weight), facts in zip(loras, lora_facts, strict=True):
            models["loras"].append(
                {
                    "name": entry.name,
                    "weight": weight,
                    "sha256": facts.sha256 if facts else None,
                    "architecture": facts.architecture if facts else None,
                }
            )
        return models


def checkpoint_file(entry: CheckpointEntry) -> str:
    """The checkpoint's path relative to its folder (A1111's ``name``: the title minus its hash)."""
    return entry.title.split(" [", 1)[0]


def _tag_weight(text: str | None) -> float:
    """``<lora:name>`` means weight 1; a non-numeric weight (``te=0.5``) is reported as 1 too."""
    try:
        return float(text) if text else 1.0
    except ValueError:
        return 1.0


def _agreeing(what: str, native: str | None, override: Any) -> str | None:
    """``checkpoint`` and ``override_settings.sd_model_checkpoint`` are two spellings of one value."""
    if override is not None and not isinstance(override, str):
        raise InputInvalid(f"override_settings value for {what} must be a string, got {excerpt(override)}")
    if native and override and _key(native) != _key(override):
        raise InputInvalid(
            f"conflicting values for {what}: {what}={excerpt(native)} and "
            f"override_settings={excerpt(override)}; give one of them"
        )
    return native or override
