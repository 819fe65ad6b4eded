"""Where a model comes from: a catalogue entry or an explicit remote reference turned into one URL to fetch.

Hugging Face sources become ``{hf_base}/{repo}/resolve/{revision}/{file}``; Civitai sources are resolved
through its API to one file (its kind must be the one asked for); plain URLs are taken as they are.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from worker.errors import ModelIncompatible
from worker.model_types import ModelType
from worker.registry.civitai import CivitaiClient
from worker.registry.models import CivitaiSource, HuggingFaceSource, UrlSource
from worker.registry.resolve import RemoteRef, Resolution

log = logging.getLogger(__name__)

DEFAULT_HF_BASE = "https://huggingface.co"


@dataclass(frozen=True)
class DownloadPlan:
    """Where a model comes from, once remote references are resolved."""

    url: str
    key: str  # names the model's download lock and temp file: the catalogue id, else derived from the source
    file_name: str | None
    sha256: str | None
    size: int | None
    approx_size: int | None
    source: dict[str, Any]  # recorded in the registry entry
    registry_id: str | None


class DownloadPlanner:
    """Turns a resolved reference into a ``DownloadPlan`` (None: there is nowhere to download it from).

    Args:
        civitai: the Civitai API client.
        hf_base: Hugging Face's base URL (tests point it at a loopback server).
        allow_pickle: whether a Civitai version with only pickle files may be chosen.
    """

    def __init__(self, *, civitai: CivitaiClient, hf_base: str = DEFAULT_HF_BASE, allow_pickle: bool) -> None:
        self.civitai = civitai
        self.hf_base = hf_base.rstrip("/")
        self.allow_pickle = allow_pickle

    def plan(self, kind: ModelType, found: Resolution) -> DownloadPlan | None:
        entry = found.catalogue
        source = entry.source if entry is not None else (found.remote.source if found.remote else None)
        if isinstance(source, HuggingFaceSource):
            return self._huggingface(source, found)
        if isinstance(source, CivitaiSource):
            return self._civitai(kind, source, found)
        if isinstance(source, UrlSource):
            key = entry.id if entry else "url-" + hashlib.sha256(source.url.encode()).hexdigest()[:16]
            return _plan(found, source.url, key, None, None, source.model_dump())
        return None

    def remote_kind(self, remote: RemoteRef) -> ModelType | None:
        """The kind a remote reference names when its source says (Civitai's model type), else None."""
        if not isinstance(remote.source, CivitaiSource):
            return None
        src = remote.source
        return self.civitai.resolve(src.model_id, src.version_id, allow_pickle=self.allow_pickle).kind

    def _huggingface(self, source: HuggingFaceSource, found: Resolution) -> DownloadPlan:
        url = f"{self.hf_base}/{source.repo}/resolve/{quote(source.revision)}/{quote(source.file)}"
        entry = found.catalogue
        key = (
            entry.id
            if entry
            else "hf-" + hashlib.sha256(f"{source.repo}/{source.file}".encode()).hexdigest()[:16]
        )
        return _plan(found, url, key, source.file.rsplit("/", 1)[-1], None, source.model_dump())

    def _civitai(self, kind: ModelType, source: CivitaiSource, found: Resolution) -> DownloadPlan:
        info = self.civitai.resolve(
            source.model_id,
            source.version_id,
            version_name=source.version_name,
            allow_pickle=self.allow_pickle,
        )
        if info.kind is not None and info.kind != kind:
            raise ModelIncompatible(
                f"civitai:{source.model_id} is a {info.kind} on Civitai, not a {kind}",
                details={"civitai_type": info.kind, "wanted": kind},
            )
        entry = found.catalogue
        if entry is not None and entry.sha256 and info.sha256 and entry.sha256 != info.sha256:
            log.warning("catalogue sha256 of %s differs from Civitai's; trusting the catalogue", entry.id)
        recorded = {
            "type": "civitai",
            "model_id": source.model_id,
            "version_id": info.version_id,
            "version_name": info.version_name,
        }
        key = entry.id if entry else f"civitai-{source.model_id}-{info.version_id}"
        plan = _plan(found, info.download_url, key, info.file_name or None, info.approx_size, recorded)
        if plan.sha256 is None and info.sha256:
            plan = replace(plan, sha256=info.sha256)
        return plan


def _plan(
    found: Resolution,
    url: str,
    key: str,
    source_file_name: str | None,
    approx_size: int | None,
    source: dict[str, Any],
) -> DownloadPlan:
    """The plan, with the catalogue's declared name, hash and size winning over what the source says."""
    entry = found.catalogue
    return DownloadPlan(
        url=url,
        key=key,
        file_name=(entry.file_name if entry else None) or source_file_name,
        sha256=entry.sha256 if entry else None,
        size=entry.size if entry else None,
        approx_size=approx_size,
        source=source,
        registry_id=entry.id if entry else None,
    )
