"""The registry knows ESRGAN-family upscalers (``upscalers/``): safetensors by their tensor names, pickles
usable without WORKER_ALLOW_PICKLE (A1111 unpickles them restricted); start.sh points A1111 at the same folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from tests.registry.test_extension_models import write_safetensors
from worker.preflight.upscalers import BUILTIN_FOLDERS
from worker.registry.upscalers import A1111_UPSCALER_FOLDERS
from worker.registry.volume import KIND_DIRS

#: the tensors that tell each family (spandrel's own detection keys), plus one shared name
FAMILIES: dict[str, dict[str, tuple[int, ...]]] = {
    "ESRGAN": {"model.0.weight": (4, 3, 3, 3), "model.1.sub.0.RDB1.conv1.0.weight": (4, 4, 3, 3)},
    "RRDBNet": {"conv_first.weight": (4, 3, 3, 3), "body.0.rdb1.conv1.weight": (4, 4, 3, 3)},
    "SwinIR": {
        "conv_first.weight": (4, 3, 3, 3),
        "layers.0.residual_group.blocks.0.attn.relative_position_index": (4, 4),
    },
    "HAT": {
        "conv_first.weight": (4, 3, 3, 3),
        "layers.0.residual_group.blocks.0.attn.relative_position_index": (4, 4),
        "layers.0.residual_group.overlap_attn.qkv.weight": (12, 4),
    },
    "DAT": {"conv_first.weight": (4, 3, 3, 3), "before_RG.1.weight": (4,)},
    "Compact": {"body.0.weight": (4, 3, 3, 3), "body.1.weight": (4,)},
}
FAMILY_OF = {"RRDBNet": "ESRGAN"}


def write_pickle(path: Path) -> Path:
    """A stand-in for a ``.pth`` state dict (a pickle): never unpickled by the registry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"params_ema": {}}))
    return path


def test_folders_are_the_ones_start_sh_gives_a1111() -> None:
    start_sh = (Path(__file__).resolve().parents[2] / "start.sh").read_text()
    assert KIND_DIRS["upscaler"] == "upscalers"
    for flag, sub in A1111_UPSCALER_FOLDERS.items():
        assert f'{flag} "$WORKER_MODELS_DIR/upscalers{"/" + sub if sub else ""}"' in start_sh
    assert set(BUILTIN_FOLDERS.values()) <= set(A1111_UPSCALER_FOLDERS.values())


@pytest.mark.parametrize("layout", sorted(FAMILIES))
def test_safetensors_upscalers_are_detected_by_family_but_a1111_lists_none(
    models_dir, make_registry, layout
) -> None:
    write_safetensors(models_dir / "upscalers" / f"{layout}.safetensors", FAMILIES[layout])
    entry = make_registry().entries()[0]
    assert (entry.kind, entry.detected_kind, entry.architecture) == ("upscaler", "upscaler", None)
    assert entry.details["family"] == FAMILY_OF.get(layout, layout)
    assert entry.short_hash is not None and len(entry.short_hash) == 10
    assert not entry.usable and "lists only .pt/.pth upscaler files" in (entry.problem or "")


def test_an_upscaler_in_the_checkpoints_folder_is_unusable(models_dir, make_registry) -> None:
    write_safetensors(models_dir / "checkpoints" / "4x.safetensors", FAMILIES["ESRGAN"])
    entry = make_registry().entries()[0]
    assert entry.kind == "checkpoint" and not entry.usable
    assert "looks like an upscaler but sits in the checkpoints/ folder" in (entry.problem or "")


def test_pth_upscalers_are_usable_pickles_without_allow_pickle(models_dir, make_registry) -> None:
    """Unlike a pickled checkpoint or LoRA: A1111 loads upscalers only through spandrel's restricted unpickler."""
    write_pickle(models_dir / "upscalers" / "4x-UltraSharp.pth")
    write_pickle(models_dir / "loras" / "old.pt")
    registry = make_registry()
    by_kind = {entry.kind: entry for entry in registry.entries()}
    upscaler, lora = by_kind["upscaler"], by_kind["lora"]
    assert (upscaler.file_name, upscaler.format, upscaler.usable) == ("4x-UltraSharp.pth", "pickle", True)
    assert (lora.format, lora.usable) == ("pickle", False) and "WORKER_ALLOW_PICKLE" in (lora.problem or "")


def test_pth_upscalers_are_found_by_stem_and_by_path(models_dir, make_registry) -> None:
    write_pickle(models_dir / "upscalers" / "4x-UltraSharp.pth")
    write_pickle(models_dir / "upscalers" / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    registry = make_registry()
    facts = registry.describe("upscaler", "4x-UltraSharp")
    assert facts is not None and facts.kind == "upscaler" and facts.sha256 is not None
    found = registry.describe("upscaler", "RealESRGAN/RealESRGAN_x4plus.pth")
    assert found is not None and found.file_name == "RealESRGAN/RealESRGAN_x4plus.pth"
    assert registry.describe("upscaler", "DAT/DAT_x4.pth") is None


def test_allowing_pickles_later_makes_a_scanned_pth_usable(models_dir, make_registry, hasher) -> None:
    """A registry written while pickles were refused is judged again once WORKER_ALLOW_PICKLE is set."""
    write_pickle(models_dir / "loras" / "old.pt")
    assert not make_registry().entries()[0].usable
    hashed = len(hasher.calls)
    allowed = make_registry(allow_pickle=True)
    allowed.scan()  # as the worker's start-up scan does
    facts = allowed.describe("lora", "old")
    assert facts is not None and facts.sha256 is not None
    assert len(hasher.calls) == hashed  # its hashes are kept, not computed again
    refused = make_registry()
    refused.scan()
    assert not refused.entries()[0].usable
