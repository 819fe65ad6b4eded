"""Pre-flight: every name a job uses, checked against the engine's own lists before generating.

A1111 silently replaces an unknown checkpoint or sampler and silently skips an unknown LoRA. Here a name
that neither the engine nor the registry knows fails the job with the nearest valid names, and nothing is
sent to txt2img. A miss refreshes the engine's lists once (a file may have just been copied onto the
volume), and a catalogue model that is not on disk yet is provisioned through the registry first
(``worker.preflight.lookup``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.a1111.catalog import CheckpointEntry, LoraEntry
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineFailed, InputInvalid, ModelIncompatible, ModelNotFound, excerpt
from worker.model_types import ModelFacts, ModelProvider, ModelType
from worker.preflight.controlnet_annotators import ANNOTATORS_FOLDER
from worker.preflight.image_models import checkpoint_warnings
from worker.preflight.lookup import EngineLists, ModelLookup
from worker.preflight.matching import (
    checkpoint_file,
    find_checkpoint,
    find_lora,
    key,
    match_checkpoint,
    match_lora,
    match_name,
    match_sampler,
    match_scheduler,
    not_found,
    stem,
    tag_weight,
)
from worker.preflight.models_report import VAE_SPECIAL, models_used
from worker.preflight.scripts import ScriptContext, check_alwayson_scripts
from worker.preflight.upscalers import check_upscaler_weights
from worker.schema import Txt2ImgJob
from worker.translate import ResolvedNames, prompt_lora_tags
from worker.translate_extensions import native_location

DEFAULT_SAMPLER = "Euler"  # what A1111's API uses when no sampler is sent (sampler_index default)


@dataclass
class PreflightResult:
    names: ResolvedNames
    models: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    provision_ms: float = 0.0
    downloaded: list[str] = field(default_factory=list)


class Preflight:
    """Resolves one job's names; a fresh instance per job (its lookup remembers what it refreshed)."""

    def __init__(
        self,
        engine: EngineLists,
        provider: ModelProvider | None = None,
        *,
        engine_kind: str = "a1111",
        clock: Clock = SYSTEM_CLOCK,
        models_dir: Path | None = None,
    ) -> None:
        self._engine = engine
        self._engine_kind = engine_kind
        self._models_dir = models_dir  # the volume's models folder (ControlNet's annotator weights)
        self._provider = provider
        self._lookup = ModelLookup(engine, provider, engine_kind=engine_kind, clock=clock)
        self._lora_renames: dict[str, str] = {}
        self._tag_renames: list[str] = []

    def resolve(self, job: Txt2ImgJob) -> PreflightResult:
        lookup = self._lookup
        checkpoint = self._checkpoint(job.checkpoint_ref) if job.checkpoint_ref else None
        if checkpoint is None and lookup.catalog.current_checkpoint:
            running = find_checkpoint(lookup.catalog, lookup.catalog.current_checkpoint)
        else:
            running = checkpoint
        lookup.base_checkpoint = checkpoint_file(running) if running else None
        sampler, scheduler = self._sampler(job.sampler or DEFAULT_SAMPLER, job.scheduler, "sampler")
        loras = tuple(self._native_lora(ref.name, ref.weight) for ref in job.loras)
        tagged = self._prompt_loras(job)
        vae = self._vae(job.vae_ref) if job.vae_ref else None
        hires_names = self._hires_names(job)
        names = ResolvedNames(
            sampler=sampler,
            scheduler=scheduler,
            checkpoint_title=checkpoint.title if checkpoint else None,
            vae=vae,
            loras=tuple((entry.name, weight) for entry, weight in loras),
            **hires_names,
            refiner_checkpoint_title=self._optional_checkpoint(job.refiner_checkpoint, "None"),
            lora_renames=tuple(self._lora_renames.items()),
        )
        models = models_used(lookup.describe, running, loras + tagged, vae)
        script_warnings = self._scripts(job, running)  # may download an extension's model too
        warnings = (
            [f"downloaded before generating: {', '.join(lookup.downloaded)}"] if lookup.downloaded else []
        )
        warnings += checkpoint_warnings(
            job, lookup.describe("checkpoint", checkpoint_file(running)) if running else None
        )
        warnings += script_warnings
        return PreflightResult(
            names=names,
            models=models,
            warnings=warnings + lookup.conversion_warnings + self._tag_renames,
            provision_ms=lookup.provision_ms,
            downloaded=lookup.downloaded,
        )

    def _scripts(self, job: Txt2ImgJob, running: CheckpointEntry | None) -> list[str]:
        """``alwayson_scripts`` (``worker.preflight.scripts``), held to the checkpoint the job runs on."""
        if not job.alwayson_scripts:
            return []
        context = ScriptContext(
            endpoint="img2img" if getattr(job, "init_images", None) else "txt2img",
            checkpoint=self._known("checkpoint", checkpoint_file(running)) if running else None,
            controlnet_facts=lambda name: self._known("controlnet", name),
            label=lambda where: native_location(
                where, controlnet=job.controlnet is not None, adetailer=job.adetailer is not None
            ),
            provision=self._lookup.provisioned,
            annotators_dir=self._models_dir / ANNOTATORS_FOLDER if self._models_dir else None,
            engine_name="the embedded engine" if self._engine_kind == "embedded" else "this A1111",
        )
        return check_alwayson_scripts(job.alwayson_scripts, self._engine, context)

    def _known(self, kind: ModelType, name: str) -> ModelFacts | None:
        """The registry's facts, or None when it has none to give (an unusable pickle A1111 still loads)."""
        try:
            return self._lookup.describe(kind, name)
        except ModelIncompatible:
            return None

    def _prompt_loras(self, job: Txt2ImgJob) -> tuple[tuple[LoraEntry, float], ...]:
        """The LoRAs of ``<lora:name:weight>`` tags in the prompts, spelled exactly as the engine does."""
        tagged: list[tuple[LoraEntry, float]] = []
        for text in (job.prompt, job.negative_prompt, job.hires_choice.prompt):
            for tag_name, weight_text in prompt_lora_tags(text or "").items():
                entry = self._lora(tag_name)
                if tag_name not in (entry.name, entry.alias) and ("lora", tag_name) in self._lookup.converted:
                    # the file the tag names was converted for this engine: send the converted one's name
                    self._lora_renames[tag_name] = entry.name
                    self._tag_renames.append(
                        f"prompt tag <lora:{excerpt(tag_name)[1:-1]}:…> sent as <lora:{entry.name}:…>, "
                        "the converted file's name as the engine lists it"
                    )
                elif tag_name not in (entry.name, entry.alias):
                    shown = excerpt(tag_name)[1:-1]
                    raise InputInvalid(
                        f"LoRA tag <lora:{shown}:…> differs from the engine's name {entry.name!r} "
                        "(A1111 matches LoRA names case-sensitively); write it as the engine does"
                    )
                tagged.append((self._usable_lora(entry), tag_weight(weight_text)))
        return tuple(tagged)

    def _hires_names(self, job: Txt2ImgJob) -> dict[str, Any]:
        hires = job.hires_choice
        hr_sampler = hr_scheduler = None
        if hires.sampler:
            hr_sampler, hr_scheduler = self._sampler(hires.sampler, hires.scheduler, "hires sampler")
        elif hires.scheduler:
            hr_scheduler = self._scheduler(hires.scheduler)
        return {
            "hr_sampler": hr_sampler,
            "hr_scheduler": hr_scheduler,
            "hr_checkpoint_title": self._optional_checkpoint(hires.checkpoint, "Use same checkpoint"),
            "hr_upscaler": self._upscaler(hires.upscaler) if hires.upscaler else None,
        }

    # --- checkpoints --------------------------------------------------------------------------

    def _checkpoint(self, ref: str) -> CheckpointEntry:
        lookup = self._lookup
        entry = lookup.find("checkpoint", ref, lambda text: find_checkpoint(lookup.catalog, text))
        if entry is None:
            raise ModelNotFound(not_found("checkpoint", ref, [c.title for c in lookup.catalog.checkpoints]))
        return self._usable_checkpoint(entry)

    def _usable_checkpoint(self, entry: CheckpointEntry) -> CheckpointEntry:
        """The engine's checkpoint, or its converted twin when this engine cannot load it as it is."""
        facts = self._lookup.describe("checkpoint", checkpoint_file(entry))
        if facts is None:
            return entry
        usable = self._lookup.usable("checkpoint", facts)
        if usable.file_name == facts.file_name:
            return entry
        converted = match_checkpoint(usable.file_name, self._lookup.catalog.checkpoints)
        if converted is None:
            raise EngineFailed(
                f"checkpoint {usable.file_name!r} was converted on the volume but the engine does not list "
                "it even after a refresh; check the engine's checkpoint folder"
            )
        return converted

    def _optional_checkpoint(self, ref: str | None, keep_word: str) -> str | None:
        if not ref or key(ref) in {key(keep_word), "none", ""}:
            return ref
        return self._checkpoint(ref).title

    # --- LoRAs --------------------------------------------------------------------------------

    def _lora(self, ref: str) -> LoraEntry:
        lookup = self._lookup
        entry = lookup.find("lora", ref, lambda text: find_lora(lookup.catalog, text))
        if entry is None:
            raise ModelNotFound(not_found("LoRA", ref, [lora.name for lora in lookup.catalog.loras]))
        return entry

    def _native_lora(self, ref: str, weight: float | None) -> tuple[LoraEntry, float]:
        entry = self._usable_lora(self._lora(ref))
        if weight is None:
            facts = self._lookup.describe("lora", entry.name)
            weight = facts.default_weight if facts and facts.default_weight is not None else 1.0
        return entry, weight

    def _usable_lora(self, entry: LoraEntry) -> LoraEntry:
        """The engine's LoRA, or its converted twin when the engine would skip this layout silently."""
        loras = self._lookup.catalog.loras
        if entry.name in self._lora_renames:
            return match_lora(self._lora_renames[entry.name], loras) or entry
        facts = self._lookup.describe("lora", entry.name)
        if facts is None:
            return entry
        usable = self._lookup.usable("lora", facts)
        if usable.file_name == facts.file_name:
            return entry
        converted = match_lora(stem(usable.file_name), self._lookup.catalog.loras)
        if converted is None:
            raise EngineFailed(
                f"LoRA {usable.file_name!r} was converted on the volume but the engine does not list it "
                "even after a refresh; check the engine's LoRA folder"
            )
        self._lora_renames[entry.name] = converted.name
        return converted

    # --- VAE, samplers, schedulers, upscalers -------------------------------------------------

    def _vae(self, ref: str) -> str:
        special = match_name(ref, VAE_SPECIAL)
        if special:
            return special
        lookup = self._lookup

        def find(text: str) -> str | None:
            vaes = lookup.catalog.vaes
            return match_name(text, vaes) or match_name(text, [stem(v) for v in vaes])

        found = lookup.find("vae", ref, find)
        vaes = lookup.catalog.vaes
        if found is None:
            raise ModelNotFound(not_found("VAE", ref, [*VAE_SPECIAL, *vaes]))
        # A stem match must be sent as the engine's full name.
        return match_name(found, vaes) or next(v for v in vaes if key(stem(v)) == key(found))

    def _sampler(self, ref: str, scheduler_ref: str | None, what: str) -> tuple[str, str | None]:
        lookup = self._lookup
        found = match_sampler(ref, lookup.catalog.samplers, lookup.catalog.schedulers)
        if found is None and lookup.refetch_lists():
            found = match_sampler(ref, lookup.catalog.samplers, lookup.catalog.schedulers)
        if found is None:
            candidates = [s.name for s in lookup.catalog.samplers]
            raise InputInvalid(
                f"{not_found(what, ref, candidates)}; valid samplers: {', '.join(candidates)} "
                "(a scheduler suffix such as ' Karras' is accepted)"
            )
        sampler, suffix = found
        scheduler = self._scheduler(scheduler_ref) if scheduler_ref else None
        if suffix is not None and scheduler is not None and key(scheduler) != key(suffix.label):
            raise InputInvalid(
                f"conflicting values for scheduler: {what} {excerpt(ref)} implies {suffix.label!r} "
                f"but scheduler={excerpt(scheduler_ref)}; give one of them"
            )
        return sampler.name, scheduler or (suffix.label if suffix else None)

    def _scheduler(self, ref: str) -> str:
        lookup = self._lookup
        found = match_scheduler(ref, lookup.catalog.schedulers)
        if found is None and lookup.refetch_lists():
            found = match_scheduler(ref, lookup.catalog.schedulers)
        if found is None:
            labels = [s.label for s in lookup.catalog.schedulers]
            raise InputInvalid(
                f"{not_found('scheduler', ref, labels)}; valid schedulers: {', '.join(labels)}"
            )
        return found.label

    def _upscaler(self, ref: str) -> str:
        lookup = self._lookup
        found = match_name(ref, lookup.catalog.upscalers)
        if found is None and lookup.refetch_lists():
            found = match_name(ref, lookup.catalog.upscalers)
        if found is None:
            upscalers = list(lookup.catalog.upscalers)
            raise InputInvalid(
                f"{not_found('hires upscaler', ref, upscalers)}; valid: {', '.join(upscalers)}"
            )
        if found in lookup.catalog.image_upscalers:  # A1111 would fall back to Lanczos, not fail
            check_upscaler_weights("hires upscaler", found, lookup.catalog, self._provider)
        return found
