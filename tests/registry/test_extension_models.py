"""The registry knows the A1111 extensions' models: ControlNets (both layouts, SD1.5 vs SDXL from the weights)
in ``ControlNet/`` and ADetailer's YOLO detectors in ``adetailer/``, on tiny real files built here."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from worker.errors import ModelIncompatible
from worker.registry.volume import KIND_DIRS

#: only the tensors detection reads; the context width is the second dimension of ``attn2.to_k``
CONTROLNETS: dict[str, tuple[dict[str, tuple[int, ...]], str]] = {
    "control_ldm_sd15": (
        {
            "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
            "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (4, 768),
            "control_model.zero_convs.0.0.weight": (4, 4, 1, 1),
        },
        "sd15",
    ),
    "control_ldm_sdxl": (
        {
            "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
            "control_model.label_emb.0.0.weight": (4, 2816),
            "control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (4, 2048),
        },
        "sdxl",
    ),
    "control_sdxl_small_no_attention": (
        {"input_hint_block.0.weight": (16, 3, 3, 3), "label_emb.0.0.weight": (4, 2816)},
        "sdxl",
    ),
    "control_diffusers_sd15": (
        {
            "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (4, 768),
        },
        "sd15",
    ),
    "control_diffusers_sdxl": (
        {
            "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
            "add_embedding.linear_1.weight": (4, 2816),
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (4, 2048),
        },
        "sdxl",
    ),
}


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=path.parent)
    os.close(fd)
    save_file({name: np.zeros(shape, dtype=np.float16) for name, shape in shapes.items()}, tmp)
    os.replace(tmp, path)
    return path


def write_detector(path: Path) -> Path:
    """A stand-in for a YOLO ``.pt`` (a pickle, as ultralytics writes them): never unpickled by the registry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"model": None, "train_args": {"task": "detect"}}))
    return path


def test_folders_are_the_ones_start_sh_gives_the_extensions() -> None:
    start_sh = (Path(__file__).resolve().parents[2] / "start.sh").read_text()
    assert KIND_DIRS["controlnet"] == "ControlNet"
    assert KIND_DIRS["adetailer"] == "adetailer"
    assert '--controlnet-dir "$WORKER_MODELS_DIR/ControlNet"' in start_sh
    assert '"$WORKER_MODELS_DIR/adetailer"' in start_sh


@pytest.mark.parametrize("name", sorted(CONTROLNETS))
def test_controlnet_kind_and_architecture_from_the_weights(models_dir, make_registry, name) -> None:
    shapes, architecture = CONTROLNETS[name]
    write_safetensors(models_dir / "ControlNet" / f"{name}.safetensors", shapes)
    entry = next(e for e in make_registry().entries() if e.kind == "controlnet")
    assert (entry.file_name, entry.detected_kind, entry.architecture) == (
        f"{name}.safetensors",
        "controlnet",
        architecture,
    )
    assert entry.usable, entry.problem


def test_controlnet_found_by_stem_with_its_architecture(models_dir, make_registry) -> None:
    write_safetensors(
        models_dir / "ControlNet" / "control_ldm_sdxl.safetensors", CONTROLNETS["control_ldm_sdxl"][0]
    )
    facts = make_registry().describe("controlnet", "control_ldm_sdxl")
    assert facts is not None and facts.architecture == "sdxl" and facts.kind == "controlnet"
    assert facts.short_hash is not None and len(facts.short_hash) == 10


def test_controlnet_in_the_checkpoints_folder_is_unusable(models_dir, make_registry) -> None:
    write_safetensors(models_dir / "checkpoints" / "control.safetensors", CONTROLNETS["control_ldm_sd15"][0])
    entry = make_registry().entries()[0]
    assert not entry.usable
    assert "looks like a controlnet but sits in the checkpoints/ folder" in (entry.problem or "")


def test_checkpoint_in_the_controlnet_folder_is_unusable(models_dir, make_registry) -> None:
    shapes = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (4, 768)}
    write_safetensors(models_dir / "ControlNet" / "sd15.safetensors", shapes)
    entry = make_registry().entries()[0]
    assert not entry.usable and "sits in the ControlNet/ folder" in (entry.problem or "")


def test_detectors_are_pickles_listed_but_refused_without_allow_pickle(models_dir, make_registry) -> None:
    write_detector(models_dir / "adetailer" / "face_yolov8n.pt")
    registry = make_registry()
    entry = registry.entries()[0]
    assert (entry.kind, entry.file_name, entry.format) == ("adetailer", "face_yolov8n.pt", "pickle")
    assert not entry.usable and "WORKER_ALLOW_PICKLE" in (entry.problem or "")
    with pytest.raises(ModelIncompatible, match=r"face_yolov8n\.pt"):
        registry.describe("adetailer", "face_yolov8n.pt")


def test_detectors_with_allow_pickle_have_hashes(models_dir, make_registry) -> None:
    write_detector(models_dir / "adetailer" / "hands" / "hand_yolov8n.pt")
    facts = make_registry(allow_pickle=True).describe("adetailer", "hands/hand_yolov8n.pt")
    assert facts is not None and facts.kind == "adetailer" and facts.sha256 is not None
