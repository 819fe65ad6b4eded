"""Pure name matching against the engine's lists: every spelling A1111 accepts, and the nearest names when
none matches (tested table-driven; no I/O)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import TypeVar

from worker.a1111.catalog import CheckpointEntry, EngineCatalog, LoraEntry, SamplerEntry, SchedulerEntry
from worker.errors import excerpt

TableT = TypeVar("TableT")
LoraTables = tuple[dict[str, LoraEntry], dict[str, LoraEntry]]


def key(text: str) -> str:
    return text.strip().lower()


def stem(path: str) -> str:
    return PurePath(path.replace("\\", "/")).stem


def checkpoint_file(entry: CheckpointEntry) -> str:
    """The checkpoint's path relative to its folder (A1111's ``name``: the title minus its hash)."""
    return entry.title.split(" [", 1)[0]


def checkpoint_aliases(entry: CheckpointEntry) -> set[str]:
    """Every spelling A1111 accepts for a checkpoint (title, file, stem, model name, hashes), lower-cased."""
    name = checkpoint_file(entry)
    aliases = {entry.title, name, stem(name), entry.model_name, PurePath(entry.filename).name}
    aliases.add(stem(entry.filename))
    for digest in (entry.hash, entry.sha256):
        if digest:
            aliases.add(digest)
    if entry.sha256:
        aliases.add(entry.sha256[:10])
    return {key(alias) for alias in aliases if alias}


def checkpoint_table(checkpoints: Iterable[CheckpointEntry]) -> dict[str, CheckpointEntry]:
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
    return (table if table is not None else checkpoint_table(checkpoints)).get(key(ref))


def lora_tables(loras: Iterable[LoraEntry]) -> LoraTables:
    """(name or file stem → first entry, alias → first entry), in the engine's order."""
    by_name: dict[str, LoraEntry] = {}
    by_alias: dict[str, LoraEntry] = {}
    for entry in loras:
        by_name.setdefault(key(entry.name), entry)
        by_name.setdefault(key(stem(entry.path)), entry)
        by_alias.setdefault(key(entry.alias), entry)
    return by_name, by_alias


def match_lora(ref: str, loras: Iterable[LoraEntry], tables: LoraTables | None = None) -> LoraEntry | None:
    """By file stem first (always unique to A1111), then by alias (``ss_output_name``)."""
    by_name, by_alias = tables if tables is not None else lora_tables(loras)
    wanted = key(ref)
    return by_name.get(wanted) or by_alias.get(wanted)


def memo(catalog: EngineCatalog, name: str, build: Callable[[], TableT]) -> TableT:
    """A lookup table built once per catalog: a job's cost does not grow with the engine's lists."""
    if name not in catalog.memo:
        catalog.memo[name] = build()
    table: TableT = catalog.memo[name]
    return table


def find_checkpoint(catalog: EngineCatalog, ref: str) -> CheckpointEntry | None:
    """``match_checkpoint`` through the catalog's memoised alias table."""
    return match_checkpoint(
        ref, catalog.checkpoints, memo(catalog, "checkpoints", lambda: checkpoint_table(catalog.checkpoints))
    )


def find_lora(catalog: EngineCatalog, ref: str) -> LoraEntry | None:
    """``match_lora`` through the catalog's memoised tables."""
    return match_lora(ref, catalog.loras, memo(catalog, "loras", lambda: lora_tables(catalog.loras)))


def match_name(ref: str, names: Iterable[str]) -> str | None:
    wanted = key(ref)
    return next((name for name in names if key(name) == wanted), None)


def match_scheduler(ref: str, schedulers: Iterable[SchedulerEntry]) -> SchedulerEntry | None:
    wanted = key(ref)
    for entry in schedulers:
        if wanted in {key(entry.name), key(entry.label), *(key(alias) for alias in entry.aliases)}:
            return entry
    return None


def _match_sampler_only(ref: str, samplers: Iterable[SamplerEntry]) -> SamplerEntry | None:
    wanted = key(ref)
    for entry in samplers:
        if wanted == key(entry.name) or wanted in {key(alias) for alias in entry.aliases}:
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
        if len(text) > len(spelling) and key(text).endswith(" " + key(spelling)):
            base = _match_sampler_only(text[: -len(spelling)].strip(), samplers)
            if base is not None:
                return base, scheduler
    return None


def nearest(ref: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The closest candidates to ``ref``, case-insensitively, in their own spelling."""
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(key(candidate), candidate)
    return [by_key[k] for k in difflib.get_close_matches(key(ref), list(by_key), n=n, cutoff=0.4)]


def not_found(kind: str, ref: str, candidates: list[str]) -> str:
    """``<kind> '<ref>' not found; nearest: ...`` (or the first names available when nothing is close)."""
    close = nearest(ref, candidates)
    if close:
        return f"{kind} {excerpt(ref)} not found; nearest: {', '.join(close)}"
    listed = ", ".join(candidates[:20]) or "none"
    return f"{kind} {excerpt(ref)} not found; available: {listed}"


def tag_weight(text: str | None) -> float:
    """``<lora:name>`` means weight 1; a non-numeric weight (``te=0.5``) is reported as 1 too."""
    try:
        return float(text) if text else 1.0
    except ValueError:
        return 1.0
