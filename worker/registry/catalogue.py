"""Load the catalogue (``cache_registry.json`` at the repo root or WORKER_CATALOGUE_PATH); link files."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from worker.errors import RegistryError
from worker.registry.models import Catalogue, CatalogueEntry, LiveEntry
from worker.registry.names import normalise, stem

log = logging.getLogger(__name__)


class CatalogueInvalid(RegistryError):
    """The catalogue file is missing or malformed: a deployment error, reported at start."""


def load_catalogue(path: Path) -> Catalogue:
    """Parse and validate the catalogue; an invalid one fails loudly (never an empty fallback)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogueInvalid(f"cannot read catalogue {path}: {exc.strerror or exc}") from None
    try:
        return Catalogue.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CatalogueInvalid(
            f"catalogue {path} is invalid ({exc.error_count()} errors; first at {where}: {first['msg']})"
        ) from None


def entry_names(entry: CatalogueEntry) -> list[str]:
    """Every name a job may use for a catalogue entry, most specific first."""
    names = [entry.id]
    if entry.file_name:
        names += [entry.file_name, entry.file_name.rsplit("/", 1)[-1], stem(entry.file_name)]
    names += list(entry.aliases)
    if entry.name:
        names.append(entry.name)
    return names


def match_catalogue(catalogue: Catalogue, live: LiveEntry) -> str | None:
    """Catalogue id a local file belongs to: same sha256, else same file name, else same loose name."""
    candidates = [e for e in catalogue.models if e.kind == live.kind]
    if live.sha256:
        for entry in candidates:
            if entry.sha256 == live.sha256:
                return entry.id
    # by name only when the hashes cannot tell otherwise: a file whose sha256 is known and differs from the
    # declared one is not that catalogue entry
    candidates = [e for e in candidates if not (e.sha256 and live.sha256 and e.sha256 != live.sha256)]
    lowered = live.file_name.lower()
    for entry in candidates:
        if entry.file_name and entry.file_name.lower() == lowered:
            return entry.id
    local = {normalise(stem(live.file_name))}
    if live.metadata.get("ss_output_name"):
        local.add(normalise(live.metadata["ss_output_name"]))
    local.discard("")
    for entry in candidates:
        if entry.file_name is None and local & {normalise(n) for n in entry_names(entry)}:
            return entry.id
    return None
