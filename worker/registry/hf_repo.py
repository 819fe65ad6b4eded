"""The files of a Hugging Face repository (or one folder of it), with the sha256 and size it publishes.

``GET {hf_base}/api/models/{repo}/tree/{revision}[/{folder}]?recursive=true``, following the ``Link: <…>;
rel="next"`` pages; the same host allowlist and token rules as every download (``url_policy``). Each LFS
file's ``lfs.oid`` is its sha256: a sync verifies every file against it; a small file stored in git has
only its git blob sha1 (``oid``), which verifies the config files of a model folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from worker.errors import DownloadFailed, ModelNotFound
from worker.redaction import public_url
from worker.url_policy import TokenRule, host_allowed, token_for

#: a repository of more files than this many pages is refused rather than listed forever
MAX_PAGES = 50
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative to the repository root
    size: int | None
    sha256: str | None  # the LFS oid; None for a file stored in git itself
    git_oid: str | None = None  # the git blob sha1 (``oid``): what verifies a small file stored in git


def list_repo_files(
    session: requests.Session,
    *,
    hf_base: str,
    repo: str,
    revision: str,
    folder: str | None,
    tokens: tuple[TokenRule, ...],
    allowed_hosts: tuple[str, ...],
    timeout_s: float,
) -> list[RepoFile]:
    """Every file of ``repo`` at ``revision`` below ``folder``; ``ModelNotFound`` when there is none."""
    url: str | None = f"{hf_base}/api/models/{repo}/tree/{quote(revision, safe='')}"
    if folder:
        url = f"{url}/{quote(folder.strip('/'))}"
    url = f"{url}?recursive=true"
    files: list[RepoFile] = []
    for _page in range(MAX_PAGES):
        if url is None:
            return files
        items, url = _page_of(session, url, tokens, allowed_hosts, timeout_s, repo)
        files += [_repo_file(item) for item in items if item.get("type") == "file"]
    raise DownloadFailed(f"Hugging Face repository {repo} lists more than {MAX_PAGES} pages of files")


def _page_of(
    session: requests.Session,
    url: str,
    tokens: tuple[TokenRule, ...],
    allowed_hosts: tuple[str, ...],
    timeout_s: float,
    repo: str,
) -> tuple[list[dict[str, Any]], str | None]:
    if not host_allowed(url, allowed_hosts):
        raise DownloadFailed(f"host of {public_url(url)} is not in WORKER_DOWNLOAD_ALLOWED_HOSTS")
    token = token_for(url, tokens)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = session.get(url, headers=headers, timeout=timeout_s, allow_redirects=False)
    except requests.RequestException as exc:
        raise DownloadFailed(f"listing {public_url(url)} failed: {exc.__class__.__name__}") from None
    if resp.status_code in (401, 403, 404):
        hint = "" if token else " (a private repository needs HF_TOKEN or hf_token)"
        raise ModelNotFound(
            f"Hugging Face repository {repo} (or its revision/folder) not found or not authorised "
            f"(HTTP {resp.status_code}){hint}",
            details={"repo": repo, "status": resp.status_code},
        )
    if resp.status_code != 200:
        raise DownloadFailed(f"listing {public_url(url)} answered HTTP {resp.status_code}")
    try:
        items = resp.json()
    except ValueError:
        raise DownloadFailed(f"listing {public_url(url)} did not answer JSON") from None
    if not isinstance(items, list):
        raise DownloadFailed(f"listing {public_url(url)} answered a {type(items).__name__}, not a list")
    found = _NEXT.search(resp.headers.get("Link", ""))
    return [i for i in items if isinstance(i, dict)], (found[1] if found else None)


def _repo_file(item: dict[str, Any]) -> RepoFile:
    lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else {}
    oid = str(lfs.get("oid") or "").lower() if lfs else ""
    size = item.get("size")
    return RepoFile(
        path=str(item.get("path") or ""),
        size=int(size) if isinstance(size, int) else None,
        sha256=oid if re.fullmatch(r"[0-9a-f]{64}", oid) else None,
        git_oid=blob if re.fullmatch(r"[0-9a-f]{40}", blob := str(item.get("oid") or "").lower()) else None,
    )
