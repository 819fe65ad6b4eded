"""Streaming sha256 (A1111's full hash) and kohya's "addnet" hash in one pass; a model folder's hash.

Large reads into one preallocated buffer keep Python overhead negligible: throughput is OpenSSL's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.registry.layouts import folder_files

CHUNK_BYTES = 8 * 1024 * 1024

#: called with the number of bytes just hashed, read or written (drives the CLI's tqdm bars); not a job's
#: progress, which the worker reports to RunPod
ByteProgress = Callable[[int], None]


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    addnet: str | None = None  # sha256 of the bytes after the safetensors header (LoRA "addnet" hash)

    @property
    def short_hash(self) -> str:
        """A1111's short hash ("AutoV2"): the first 10 hex characters of the full sha256."""
        return self.sha256[:10]


#: signature of a hash function the scanner accepts (tests wrap it to count calls)
Hasher = Callable[[Path, int | None, ByteProgress | None], FileHashes]


def hash_file(
    path: Path, addnet_offset: int | None = None, progress: ByteProgress | None = None
) -> FileHashes:
    """sha256 of the whole file; also the hash from ``addnet_offset`` on, when given, in the same read."""
    full = hashlib.sha256()
    tail = hashlib.sha256() if addnet_offset is not None else None
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    pos = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            full.update(chunk)
            if tail is not None and addnet_offset is not None:
                if pos >= addnet_offset:
                    tail.update(chunk)
                elif pos + n > addnet_offset:
                    tail.update(chunk[addnet_offset - pos :])
            pos += n
            if progress is not None:
                progress(n)
    return FileHashes(full.hexdigest(), tail.hexdigest() if tail is not None else None)


def folder_digest(folder: Path, hasher: Hasher, progress: ByteProgress | None = None) -> str:
    """A folder's sha256: over ``<relative path>\0<file sha256>\n`` of its files in path order."""
    digest = hashlib.sha256()
    for file in folder_files(folder):
        rel = file.relative_to(folder).as_posix()
        digest.update(f"{rel}\0{hasher(file, None, progress).sha256}\n".encode())
    return digest.hexdigest()
