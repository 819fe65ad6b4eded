"""An output file planned tensor by tensor from source tensors, then streamed to disk one tensor at a time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from worker.registry.conversions import ConversionFailed
from worker.registry.hashing import ByteProgress
from worker.registry.safetensors_header import HeaderError
from worker.registry.tensors import Tensor, TensorFile, concat, write_safetensors


def open_tensor_file(path: Path) -> TensorFile:
    try:
        return TensorFile(path)
    except HeaderError as exc:
        raise ConversionFailed(f"{path.name}: {exc}", details={"file": str(path.name)}) from None
    except OSError as exc:
        raise ConversionFailed(f"{path.name}: unreadable ({exc.strerror or exc})") from None


def open_files(paths: list[Path]) -> list[TensorFile]:
    return [open_tensor_file(p) for p in paths]


def tensor_names(files: list[TensorFile]) -> Iterable[tuple[TensorFile, str]]:
    for file in files:
        for name in file.names:
            yield file, name


@dataclass(frozen=True)
class TensorSource:
    """Where one output tensor comes from: a source tensor and how to reshape it, or parts to join."""

    file: TensorFile
    names: tuple[str, ...]
    shape: tuple[int, ...]
    transpose: bool = False

    def load(self) -> Tensor:
        parts = [self.file.get(n) for n in self.names]
        tensor = parts[0] if len(parts) == 1 else concat(parts)
        if self.transpose:
            tensor = tensor.transpose()
        return tensor.reshape(*self.shape) if tensor.shape != self.shape else tensor


@dataclass(frozen=True)
class SplitSource(TensorSource):
    """One third of OpenCLIP's fused q/k/v projection."""

    index: int = 0

    def load(self) -> Tensor:
        return self.file.get(self.names[0]).split(3)[self.index]


#: output tensor name -> where it comes from, in the output file's order
Plan = dict[str, TensorSource]


def write_plan(
    out: Path,
    plan: Plan,
    metadata: dict[str, str],
    half: bool,
    progress: ByteProgress | None,
    extra: dict[str, Tensor] | None = None,
) -> int:
    """Stream ``plan`` (plus small ``extra`` tensors) into ``out``; ``half`` casts floats to fp16."""

    def dtype_of(src: TensorSource) -> str:
        dtype = src.file.dtype(src.names[0])
        return "F16" if half and dtype in ("F32", "BF16", "F64") else dtype

    layout = {name: (dtype_of(src), src.shape) for name, src in plan.items()}
    layout |= {name: (t.dtype, t.shape) for name, t in (extra or {}).items()}

    def produce() -> Iterable[tuple[str, Tensor]]:
        for name, src in plan.items():
            yield name, src.load().cast(layout[name][0])
        yield from (extra or {}).items()

    try:
        return write_safetensors(out, produce, metadata, layout=layout, progress=progress)
    except HeaderError as exc:
        raise ConversionFailed(f"reading the source failed: {exc}") from None
