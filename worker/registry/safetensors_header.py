"""Read a safetensors header (8-byte little-endian length + JSON) without touching the tensor data.

A multi-GB checkpoint on a network volume costs one small read here instead of a full pass.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

#: safetensors itself refuses headers above 100 MB; a bigger length means a corrupt or foreign file
MAX_HEADER_BYTES = 100 * 1024 * 1024


class HeaderError(ValueError):
    """The file is not a readable safetensors file (message says why)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    header_bytes: int  # length of the JSON part
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_offset(self) -> int:
        """Where tensor data starts (kohya's "addnet" hash covers the bytes from here)."""
        return 8 + self.header_bytes

    @property
    def data_end(self) -> int:
        return self.data_offset + max((t.end for t in self.tensors.values()), default=0)


def parse_header(prefix: bytes, header_bytes: int) -> SafetensorsHeader:
    try:
        raw = json.loads(prefix.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"header is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise HeaderError("header is not a JSON object")
    metadata_raw = raw.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in metadata_raw.items()} if isinstance(metadata_raw, dict) else {}
    tensors: dict[str, TensorInfo] = {}
    for name, info in raw.items():
        try:
            start, end = (int(x) for x in info["data_offsets"])
            tensors[name] = TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]), start, end)
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"tensor {name[:80]!r} has a malformed entry") from None
        if start < 0 or end < start:
            raise HeaderError(f"tensor {name[:80]!r} has invalid offsets")
    return SafetensorsHeader(header_bytes, tensors, metadata)


def read_header(path: Path, *, file_size: int | None = None) -> SafetensorsHeader:
    """Read and validate the header; a header pointing past the end of the file means truncated.

    Raises:
        HeaderError: unreadable, corrupt or truncated file.
    """
    size = os.path.getsize(path) if file_size is None else file_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise HeaderError("file shorter than the 8-byte safetensors length prefix")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise HeaderError(f"header length {length} is implausible (corrupt file?)")
        if 8 + length > size:
            raise HeaderError(f"truncated: header needs {8 + length} bytes, file has {size}")
        prefix = fh.read(length)
    header = parse_header(prefix, length)
    if header.data_end > size:
        raise HeaderError(f"truncated: tensor data ends at byte {header.data_end}, file has {size}")
    return header
