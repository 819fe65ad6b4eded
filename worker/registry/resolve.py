"""Turn a job's model reference into a local file, a catalogue entry or a remote source.

Accepted forms (case-insensitive): registry id, alias, file name (with or without sub-folder), stem,
kohya ``ss_output_name`` (LoRAs), A1111 title ``name [shorthash]``, 10-char short hash, full sha256,
``civitai:<model>[@<version>]``, and Hugging Face ``[hf:]owner/repo/path/file.safetensors``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from worker.errors import InputInvalid, ModelNotFound
from worker.model_types import ModelType
from worker.registry.catalogue import entry_names
from worker.registry.models import (
    Catalogue,
    CatalogueEntry,
    CivitaiSource,
    HuggingFaceSource,
    LiveEntry,
    LiveRegistry,
)
from worker.registry.names import normalise, safe_relative_name, stem

_CIVITAI = re.compile(r"^civitai:(\d+)(?:@(\d+))?$", re.IGNORECASE)
_HF = re.compile(r"^(?:hf:|huggingface:)?([\w.-]+/[\w.-]+)/(.+\.(?:safetensors|ckpt|pt|bin))$", re.IGNORECASE)
_TITLE = re.compile(r"^(.*\S)\s*\[([0-9a-f]{8,12})\]$", re.IGNORECASE)
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class RemoteRef:
    """An explicit remote reference; ``source`` is what the downloader needs."""

    source: CivitaiSource | HuggingFaceSource


@dataclass(frozen=True)
class Resolution:
    live: LiveEntry | None = None
    catalogue: CatalogueEntry | None = None
    remote: RemoteRef | None = None


def parse_remote(reference: str) -> RemoteRef | None:
    ref = reference.strip()
    m = _CIVITAI.match(ref)
    if m:
        return RemoteRef(CivitaiSource(model_id=int(m[1]), version_id=int(m[2]) if m[2] else None))
    m = _HF.match(ref)
    if m and (ref.lower().startswith(("hf:", "huggingface:")) or ref.count("/") >= 2):
        safe_relative_name(f"{m[1]}/{m[2]}", what="huggingface reference")
        return RemoteRef(HuggingFaceSource(repo=m[1], file=m[2]))
    if ref.lower().startswith(("civitai:", "hf:", "huggingface:")):
        raise InputInvalid(
            f"malformed remote reference {reference!r}: use civitai:<model>[@<version>] or hf:owner/repo/file"
        )
    return None


def _source_matches(source: dict[str, object] | None, remote: RemoteRef) -> bool:
    if not source:
        return False
    want = remote.source
    if isinstance(want, CivitaiSource):
        return (
            source.get("type") == "civitai"
            and source.get("model_id") == want.model_id
            and (want.version_id is None or source.get("version_id") == want.version_id)
        )
    return (
        source.get("type") == "huggingface"
        and str(source.get("repo", "")).lower() == want.repo.lower()
        and str(source.get("file", "")).lower() == want.file.lower()
    )


def _live_names(entry: LiveEntry, catalogue_by_id: dict[str, CatalogueEntry]) -> list[list[str]]:
    """Name tiers for a local file, most specific first."""
    base = entry.file_name.rsplit("/", 1)[-1]
    tiers = [
        [entry.registry_id or ""],
        [entry.file_name, base],
        [stem(entry.file_name)],
    ]
    aliases = list(catalogue_by_id[entry.registry_id].aliases) if entry.registry_id in catalogue_by_id else []
    if entry.registry_id in catalogue_by_id and catalogue_by_id[entry.registry_id].name:
        aliases.append(catalogue_by_id[entry.registry_id].name)
    if entry.metadata.get("ss_output_name"):
        aliases.append(entry.metadata["ss_output_name"])
    tiers.append(aliases)
    return tiers


class LiveIndex:
    """The live entries of one registry snapshot, indexed by every name and hash a job may use.

    Built once per snapshot (``ModelRegistry`` caches it), so a lookup costs a few dict reads instead of a
    pass over every entry: per-job cost does not grow with the volume. Same answers as a linear
    ``_first_tier`` pass: exact names tier by tier, then loose names, then hashes.
    """

    def __init__(self, registry: LiveRegistry, catalogue: Catalogue) -> None:
        catalogue_by_id = {e.id: e for e in catalogue.models}
        self._exact: dict[tuple[str, int, str], list[LiveEntry]] = {}
        self._loose: dict[tuple[str, str], list[LiveEntry]] = {}
        self._hashes: dict[tuple[str, str], list[LiveEntry]] = {}
        for entry in registry.models.values():
            exact_seen: set[tuple[str, int, str]] = set()
            loose_seen: set[str] = set()
            for tier, names in enumerate(_live_names(entry, catalogue_by_id)):
                for name in names:
                    if not name:
                        continue
                    exact = (entry.kind, tier, name.lower())
                    if exact not in exact_seen:
                        exact_seen.add(exact)
                        self._exact.setdefault(exact, []).append(entry)
                    loose = normalise(name)
                    if loose and loose not in loose_seen:
                        loose_seen.add(loose)
                        self._loose.setdefault((entry.kind, loose), []).append(entry)
            hashes = {entry.sha256 or "", (entry.sha256 or "")[:10], (entry.addnet_hash or "")[:12]}
            for digest in hashes - {""}:
                self._hashes.setdefault((entry.kind, digest), []).append(entry)
        self._tiers = 1 + max((tier for _, tier, _ in self._exact), default=0)

    def by_name(self, kind: ModelType, ref: str) -> list[LiveEntry]:
        """Entries at the most specific name tier any entry matches (exact names, then loose ones)."""
        lowered = ref.lower()
        best: dict[int, LiveEntry] = {}
        for tier in range(self._tiers):
            for entry in self._exact.get((kind, tier, lowered), ()):
                best.setdefault(id(entry), entry)
            if best:
                return list(best.values())
        return list(self._loose.get((kind, normalise(ref)), ())) if normalise(ref) else []

    def by_hash(self, kind: ModelType, ref: str) -> list[LiveEntry]:
        """Entries whose full sha256, 10-character short hash or 12-character addnet hash is ``ref``."""
        if not _HEX.match(ref) or len(ref) not in (10, 12, 64):
            return []
        hits = self._hashes.get((kind, ref), [])
        # a 12-character reference names an addnet hash; 10 and 64 name the file's sha256
        if len(ref) == 12:
            return [e for e in hits if (e.addnet_hash or "").startswith(ref)]
        return [e for e in hits if e.sha256 and e.sha256.startswith(ref)]


def _by_hash(ref: str, sha256: str | None, addnet: str | None = None) -> bool:
    if not _HEX.match(ref):
        return False
    if sha256 and (ref == sha256 or (len(ref) == 10 and sha256.startswith(ref))):
        return True
    return bool(addnet and len(ref) == 12 and addnet.startswith(ref))


def _first_tier(
    items: Iterable[object], tiers_of: Callable[[object], list[list[str]]], ref: str
) -> list[object]:
    """Items matching ``ref`` at the most specific tier any item matches (exact, then loose)."""
    best: dict[int, list[object]] = {}
    lowered, loose = ref.lower(), normalise(ref)
    for item in items:
        for index, names in enumerate(tiers_of(item)):
            if any(n and n.lower() == lowered for n in names):
                best.setdefault(index, []).append(item)
                break
        else:
            if loose and any(normalise(n) == loose for names in tiers_of(item) for n in names if n):
                best.setdefault(100, []).append(item)
    return best[min(best)] if best else []


def _one(matches: list[object], reference: str, kind: ModelType) -> object | None:
    if len(matches) > 1:
        names = sorted(str(getattr(m, "file_name", None) or getattr(m, "id", "?")) for m in matches)
        raise InputInvalid(
            f"{kind} reference {reference!r} is ambiguous: it matches {', '.join(names)}; use the file name",
            details={"reference": reference, "matches": names},
        )
    return matches[0] if matches else None


def resolve(
    kind: ModelType,
    reference: str,
    registry: LiveRegistry,
    catalogue: Catalogue,
    index: LiveIndex | None = None,
) -> Resolution:
    """Find ``reference`` among local files first, then the catalogue, then as an explicit remote.

    Returns an empty ``Resolution`` when nothing matches (the caller decides between None and
    ``ModelNotFound``). Raises ``InputInvalid`` for ambiguous or malformed references. ``index`` is the
    snapshot's ``LiveIndex`` (built here when not given).
    """
    ref = reference.strip()
    if not ref:
        raise InputInvalid(f"empty {kind} reference")
    catalogue_by_id = {e.id: e for e in catalogue.models}
    cat = [e for e in catalogue.models if e.kind == kind]
    remote = parse_remote(ref)
    if remote is not None:
        return _resolve_remote(kind, remote, registry, cat)
    if "/" in ref or "\\" in ref or ref.startswith(".."):
        safe_relative_name(ref, what=f"{kind} reference")  # a name is never a path out of the folder
    if index is None:
        index = LiveIndex(registry, catalogue)
    title = _TITLE.match(ref)
    if title:  # A1111 title "name [shorthash]": the hash decides
        ref_hash = title[2].lower()
        live_hits = [e for e in index.by_hash(kind, ref_hash) if _by_hash(ref_hash, e.sha256)]
        if live_hits:
            return _with_catalogue(_one(list(live_hits), reference, kind), catalogue_by_id)
        ref = title[1]
    live = _one(list(index.by_name(kind, ref)), reference, kind)
    if live is None:
        live = _one(list(index.by_hash(kind, ref.lower())), reference, kind)
    if live is not None:
        return _with_catalogue(live, catalogue_by_id)
    return _resolve_catalogue(kind, ref, reference, cat)


def _resolve_remote(
    kind: ModelType, remote: RemoteRef, registry: LiveRegistry, cat: list[CatalogueEntry]
) -> Resolution:
    """A local file downloaded from that source, else a catalogue entry with it; the remote either way."""
    lives = [e for e in registry.models.values() if e.kind == kind]
    live_hits = [e for e in lives if _source_matches(e.source, remote)]
    cat_hits = [e for e in cat if _source_matches(e.source.model_dump(), remote)]
    cat_entry = cat_hits[0] if cat_hits else None
    if not live_hits and cat_entry is not None:
        live_hits = [e for e in lives if e.registry_id == cat_entry.id]
    return Resolution(live_hits[0] if live_hits else None, cat_entry, remote)


def _resolve_catalogue(kind: ModelType, ref: str, reference: str, cat: list[CatalogueEntry]) -> Resolution:
    """A catalogue entry not on the volume: by its names (most specific first), then its declared sha256."""
    entry = _one(_first_tier(cat, lambda e: [[n] for n in entry_names(e)], ref), reference, kind)  # type: ignore[arg-type]
    if entry is None:
        entry = _one([e for e in cat if _by_hash(ref.lower(), e.sha256)], reference, kind)
    return Resolution(None, entry, None) if isinstance(entry, CatalogueEntry) else Resolution()


def _with_catalogue(live: object, catalogue_by_id: dict[str, CatalogueEntry]) -> Resolution:
    assert isinstance(live, LiveEntry)
    return Resolution(live, catalogue_by_id.get(live.registry_id or ""), None)


def not_found(kind: ModelType, reference: str, registry: LiveRegistry, catalogue: Catalogue) -> ModelNotFound:
    """``ModelNotFound`` naming the reference and the nearest known names (difflib)."""
    names: set[str] = set()
    for e in registry.models.values():
        if e.kind == kind:
            names.add(stem(e.file_name))
    for c in catalogue.models:
        if c.kind == kind:
            names.add(c.id)
            if c.file_name:
                names.add(stem(c.file_name))
    by_lower = {n.lower(): n for n in names}
    near = [
        by_lower[n] for n in difflib.get_close_matches(reference.lower(), list(by_lower), n=5, cutoff=0.4)
    ]
    hint = f"; nearest: {', '.join(near)}" if near else f"; known {kind}s: {len(names)}"
    return ModelNotFound(
        f"{kind} {reference!r} not found on the volume or in the catalogue{hint}",
        details={"reference": reference, "kind": kind, "nearest": near},
    )
