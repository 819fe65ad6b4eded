"""safetensors tensors as numpy arrays, without torch: read one tensor at a time, write as a stream.

The worker's environment has no torch, and a conversion must not hold a whole checkpoint in memory:
``safetensors.numpy.save_file`` builds the entire file as one ``bytes`` object (peak = 2x the model) and
numpy has no bfloat16, which ``safetensors.numpy`` then refuses. Here every tensor is read on demand
with one ``pread`` into its own array (bf16 kept as its raw 16-bit pattern, widened exactly to fp32
only when a cast needs it) and written straight to the output file, so peak memory is about one tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.registry.hashing import ByteProgress
from worker.registry.safetensors_header import HeaderError, SafetensorsHeader, read_header

#: safetensors dtype name -> numpy storage dtype (bf16 is stored as its raw uint16 pattern)
STORAGE: dict[str, np.dtype[np.generic]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_ALIGN_ORDER = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}


@dataclass(frozen=True)
class Tensor:
    """One tensor: its safetensors dtype name and its data in the storage dtype (see ``STORAGE``)."""

    dtype: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def reshape(self, *shape: int) -> Tensor:
        return Tensor(self.dtype, self.data.reshape(shape))

    def transpose(self) -> Tensor:
        return Tensor(self.dtype, np.ascontiguousarray(self.data.T))

    def split(self, parts: int) -> list[Tensor]:
        return [Tensor(self.dtype, np.ascontiguousarray(p)) for p in np.split(self.data, parts, axis=0)]

    def float32(self) -> np.ndarray:
        """Exact widening to fp32 (bf16 is the upper half of an fp32 bit pattern)."""
        if self.dtype == "BF16":
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return self.data.astype(np.float32)

    def cast(self, dtype: str) -> Tensor:
        """Another float dtype (``F16``/``F32``/``BF16``); integers and equal dtypes come back unchanged."""
        if dtype == self.dtype or self.dtype not in FLOAT_DTYPES:
            return self
        wide = self.float32()
        if dtype == "BF16":  # round to nearest even on the dropped 16 bits
            bits = wide.view(np.uint32)
            rounded = bits + 0x7FFF + ((bits >> 16) & 1)
            return Tensor("BF16", (rounded >> 16).astype(np.uint16))
        return Tensor(dtype, wide.astype(STORAGE[dtype]))


def concat(tensors: list[Tensor]) -> Tensor:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"cannot concatenate tensors of dtypes {sorted(dtypes)}")
    return Tensor(dtypes.pop(), np.concatenate([t.data for t in tensors], axis=0))


def scalar(value: float, dtype: str = "F32") -> Tensor:
    return Tensor(dtype, np.asarray(value, dtype=STORAGE[dtype]).reshape(()))


class TensorFile:
    """A safetensors file opened for reading tensors one by one (the header is validated first).

    Raises:
        HeaderError: unreadable, truncated or with a dtype this reader does not know.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: SafetensorsHeader = read_header(path)
        for name, info in self.header.tensors.items():
            storage = STORAGE.get(info.dtype)
            if storage is None:
                raise HeaderError(f"tensor {name[:80]!r} has unsupported dtype {info.dtype}")
            expected = int(np.prod(info.shape, dtype=np.int64)) * storage.itemsize
            if info.end - info.start != expected:
                raise HeaderError(
                    f"tensor {name[:80]!r}: {info.end - info.start} bytes for shape {info.shape}"
                )

    @property
    def names(self) -> list[str]:
        return list(self.header.tensors)

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def dtype(self, name: str) -> str:
        return self.header.tensors[name].dtype

    def shape(self, name: str) -> tuple[int, ...]:
        return self.header.tensors[name].shape

    def nbytes(self, name: str) -> int:
        info = self.header.tensors[name]
        return info.end - info.start

    def get(self, name: str) -> Tensor:
        info = self.header.tensors[name]
        storage = STORAGE[info.dtype]
        size = info.end - info.start
        buffer = bytearray(size)
        with open(self.path, "rb", buffering=0) as fh:
            view = memoryview(buffer)
            done = 0
            while done < size:
                n = os.preadv(fh.fileno(), [view[done:]], self.header.data_offset + info.start + done)
                if n <= 0:
                    raise HeaderError(f"truncated: tensor {name[:80]!r} ends past the end of the file")
                done += n
        return Tensor(info.dtype, np.frombuffer(buffer, dtype=storage).reshape(info.shape))


def _ordered(names: Iterable[tuple[str, str]]) -> list[str]:
    """safetensors' own order: larger alignment first, then by name (keeps every tensor aligned)."""
    return [n for n, _ in sorted(names, key=lambda item: (-_ALIGN_ORDER.get(item[1], 1), item[0]))]


def write_safetensors(
    path: Path,
    tensors: dict[str, Tensor] | Callable[[], Iterable[tuple[str, Tensor]]],
    metadata: dict[str, str] | None = None,
    *,
    layout: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    progress: ByteProgress | None = None,
) -> int:
    """Write a safetensors file; returns its size. The file is fsynced but not renamed (callers own that).

    ``tensors`` is either a dict, or a producer called once that yields ``(name, tensor)`` in any order,
    with ``layout`` (name -> (dtype, shape)) announced up front so the header can be written first and
    each tensor is written as soon as it is produced (the converters' streaming path).
    """
    if isinstance(tensors, dict):
        items = tensors
        layout = {name: (t.dtype, t.shape) for name, t in items.items()}

        def produce() -> Iterable[tuple[str, Tensor]]:
            return items.items()

    else:
        if layout is None:
            raise ValueError("a tensor producer needs its layout up front")
        produce = tensors
    order = _ordered((name, dtype) for name, (dtype, _) in layout.items())
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offsets: dict[str, tuple[int, int]] = {}
    offset = 0
    for name in order:
        dtype, shape = layout[name]
        size = int(np.prod(shape, dtype=np.int64)) * STORAGE[dtype].itemsize
        offsets[name] = (offset, offset + size)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    data_start = 8 + len(blob)
    written: set[str] = set()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        fh.truncate(data_start + offset)
        for name, tensor in produce():
            dtype, shape = layout[name]
            if tensor.dtype != dtype or tensor.shape != tuple(shape):
                raise ValueError(f"tensor {name!r} is {tensor.dtype}{tensor.shape}, announced {dtype}{shape}")
            fh.seek(data_start + offsets[name][0])
            fh.write(np.ascontiguousarray(tensor.data).data)
            written.add(name)
            if progress is not None:
                progress(tensor.nbytes)
        missing = set(layout) - written
        if missing:
            raise ValueError(
                f"{len(missing)} announced tensors were never produced, e.g. {sorted(missing)[:3]}"
            )
        fh.flush()
        os.fsync(fh.fileno())
    return data_start + offset
