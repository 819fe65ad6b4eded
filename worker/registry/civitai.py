"""Resolve Civitai model/version ids to one downloadable file through Civitai's public REST API.

``GET {api}/model-versions/{id}`` when the version is known, else ``GET {api}/models/{id}`` and a
version chosen by name (never silently "the latest" when the catalogue names a version).
The API base is injectable so tests point it at a loopback server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests

from worker.errors import DownloadFailed, ModelIncompatible, ModelNotFound
from worker.model_types import Architecture, ModelType
from worker.redaction import public_url
from worker.registry.names import normalise
from worker.url_policy import host_allowed, may_carry_token

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://civitai.com/api/v1"

#: Civitai "type" -> our kind
CIVITAI_TYPES: dict[str, ModelType] = {
    "checkpoint": "checkpoint",
    "lora": "lora",
    "locon": "lora",
    "dora": "lora",
    "lycoris": "lora",
    "textualinversion": "embedding",
    "vae": "vae",
    "controlnet": "controlnet",
    "upscaler": "upscaler",
}

#: Civitai "baseModel" prefix -> architecture (Pony, Illustrious and NoobAI are SDXL fine-tunes)
CIVITAI_BASES: tuple[tuple[str, Architecture], ...] = (
    ("sd 1", "sd15"),
    ("sd 2", "sd2"),
    ("sdxl turbo", "sdxl"),
    ("sdxl lightning", "sdxl"),
    ("sdxl 1.0", "sdxl"),
    ("sdxl", "sdxl"),
    ("pony", "sdxl"),
    ("illustrious", "sdxl"),
    ("noobai", "sdxl"),
    ("flux", "flux"),
    ("sd 3", "sd3"),
)


@dataclass(frozen=True)
class CivitaiFile:
    model_id: int
    version_id: int
    version_name: str
    kind: ModelType | None
    architecture: Architecture | None
    file_name: str
    download_url: str
    sha256: str | None
    approx_size: int | None


def _architecture(base_model: str | None) -> Architecture | None:
    base = (base_model or "").lower()
    for prefix, arch in CIVITAI_BASES:
        if base.startswith(prefix):
            return arch
    return None


class CivitaiClient:
    def __init__(
        self,
        *,
        api_base: str = DEFAULT_API_BASE,
        token: str | None = None,
        timeout_s: float = 30.0,
        allowed_hosts: tuple[str, ...] = ("civitai.com",),
        session: requests.Session | None = None,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.allowed_hosts = allowed_hosts
        self.session = session or requests.Session()

    def _get(self, path: str) -> dict[str, Any]:
        url = f"{self.api_base}{path}"
        if not host_allowed(url, self.allowed_hosts):
            raise DownloadFailed(
                f"Civitai API host of {public_url(url)} is not in WORKER_DOWNLOAD_ALLOWED_HOSTS"
            )
        headers = {"Accept": "application/json"}
        if self.token and may_carry_token(url):
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = self.session.get(url, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise DownloadFailed(f"Civitai API unreachable ({exc.__class__.__name__})") from None
        if resp.status_code == 404:
            raise ModelNotFound(f"Civitai has no {path.strip('/').replace('/', ' ')}")
        if resp.status_code != 200:
            raise DownloadFailed(f"Civitai API answered HTTP {resp.status_code} for {path}")
        try:
            data = resp.json()
        except ValueError:
            raise DownloadFailed(f"Civitai API sent invalid JSON for {path}") from None
        if not isinstance(data, dict):
            raise DownloadFailed(f"Civitai API sent unexpected JSON for {path}")
        return data

    def resolve(
        self,
        model_id: int,
        version_id: int | None = None,
        *,
        version_name: str | None = None,
        allow_pickle: bool = False,
    ) -> CivitaiFile:
        """The one file to download for a Civitai model (version); raises ModelNotFound/DownloadFailed."""
        model_type: str | None = None
        if version_id is not None:
            version = self._get(f"/model-versions/{version_id}")
            if version.get("modelId") not in (None, model_id):
                raise ModelNotFound(
                    f"Civitai version {version_id} belongs to model {version.get('modelId')}, not {model_id}"
                )
            model_type = (version.get("model") or {}).get("type")
        else:
            model = self._get(f"/models/{model_id}")
            model_type = model.get("type")
            versions = [v for v in model.get("modelVersions") or [] if isinstance(v, dict)]
            if not versions:
                raise ModelNotFound(f"Civitai model {model_id} has no versions")
            if version_name is not None:
                wanted = normalise(version_name)
                picked = [v for v in versions if normalise(str(v.get("name", ""))) == wanted]
                if not picked:
                    names = ", ".join(str(v.get("name")) for v in versions[:10])
                    raise ModelNotFound(
                        f"Civitai model {model_id} has no version named {version_name!r} (has: {names})"
                    )
                version = picked[0]
            else:
                version = versions[0]  # Civitai lists the newest first
                log.info(
                    "civitai:%d has no pinned version; using the newest, %s", model_id, version.get("name")
                )
        return self._pick_file(model_id, version, model_type, allow_pickle=allow_pickle)

    def _pick_file(
        self, model_id: int, version: dict[str, Any], model_type: str | None, *, allow_pickle: bool
    ) -> CivitaiFile:
        files = [f for f in version.get("files") or [] if isinstance(f, dict) and f.get("downloadUrl")]
        models = [f for f in files if str(f.get("type", "Model")) in ("Model", "Pruned Model")]

        def is_safetensors(f: dict[str, Any]) -> bool:
            fmt = str((f.get("metadata") or {}).get("format", "")).lower()
            return fmt == "safetensor" or str(f.get("name", "")).lower().endswith(".safetensors")

        safe = [f for f in models if is_safetensors(f)]
        pool = safe or (models if allow_pickle else [])
        if not pool:
            raise ModelIncompatible(
                f"Civitai version {version.get('id')} has no safetensors file"
                + ("" if allow_pickle else " (pickle files are refused unless WORKER_ALLOW_PICKLE=true)")
            )
        chosen = next((f for f in pool if f.get("primary")), pool[0])
        sha = str((chosen.get("hashes") or {}).get("SHA256") or "").lower() or None
        size_kb = chosen.get("sizeKB")
        kind = CIVITAI_TYPES.get(str(model_type or "").lower().replace(" ", ""))
        return CivitaiFile(
            model_id=model_id,
            version_id=int(version.get("id") or 0),
            version_name=str(version.get("name") or ""),
            kind=kind,
            architecture=_architecture(version.get("baseModel")),
            file_name=str(chosen.get("name") or ""),
            download_url=str(chosen["downloadUrl"]),
            sha256=sha if sha and len(sha) == 64 else None,
            approx_size=int(float(size_kb) * 1024) if isinstance(size_kb, int | float) else None,
        )
