"""Header reading, detection, scanning, hashing and the hash cache, on real files."""

from __future__ import annotations

import hashlib
import os
import struct
import threading

import pytest

from tests.registry.fixtures import SPECS, raw_safetensors, write_model
from worker.registry.detect import UnsupportedCheckpoint, checkpoint_pipeline
from worker.registry.hashing import hash_file
from worker.registry.safetensors_header import HeaderError, read_header

EXPECTED = {
    "checkpoint-sd15": "sd15",
    "checkpoint-sd2": "sd2",
    "checkpoint-sdxl": "sdxl",
    "checkpoint-sdxl_refiner": "sdxl_refiner",
    "checkpoint-flux": "flux",
    "lora-sd15": "sd15",
    "lora-sdxl": "sdxl",
    "lora-sdxl-unet-only": "sdxl",
    "lora-flux": "flux",
    "embedding-sd15": "sd15",
    "embedding-sd2": "sd2",
    "embedding-sdxl": "sdxl",
    "vae-unknown": "unknown",
}


def test_every_fixture_is_detected(models_dir, make_registry):
    assert set(EXPECTED) == set(SPECS)
    for spec in SPECS:
        write_model(models_dir, spec)
    registry = make_registry()
    result = registry.scan()
    assert result.total == len(SPECS)
    entries = {e.file_name: e for e in registry.entries()}
    for spec, arch in EXPECTED.items():
        entry = entries[f"{spec}.safetensors"]
        assert entry.detected_kind == spec.split("-")[0], spec
        assert entry.architecture == arch, spec
        assert entry.usable, (spec, entry.problem)
        assert entry.short_hash == entry.sha256[:10]


def test_metadata_kept_and_used_for_architecture(models_dir, make_registry):
    write_model(
        models_dir,
        "vae-unknown",
        "sdxl_vae.safetensors",
        metadata={
            "modelspec.architecture": "stable-diffusion-xl-v1-base/vae",
            "modelspec.thumbnail": "x" * 999,
        },
    )
    write_model(
        models_dir,
        "lora-sd15",
        "trained.safetensors",
        metadata={"ss_output_name": "MyStyle", "ss_base_model_version": "sd_v1"},
    )
    registry = make_registry()
    entries = {e.file_name: e for e in registry.entries()}
    assert entries["sdxl_vae.safetensors"].architecture == "sdxl"
    assert "modelspec.thumbnail" not in entries["sdxl_vae.safetensors"].metadata
    assert entries["trained.safetensors"].metadata["ss_output_name"] == "MyStyle"


def test_truncated_file_is_unusable(models_dir, make_registry):
    path = write_model(models_dir, "checkpoint-sd15", "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(HeaderError, match="truncated"):
        read_header(path)
    entry = make_registry().entries()[0]
    assert not entry.usable and "truncated" in (entry.problem or "")


def test_corrupt_header_and_wrong_folder(models_dir, make_registry):
    (models_dir / "checkpoints" / "junk.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    (models_dir / "checkpoints" / "huge.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    write_model(models_dir, "lora-sdxl", "../checkpoints/misplaced_lora.safetensors")
    entries = {e.file_name: e for e in make_registry().entries()}
    assert "not JSON" in (entries["junk.safetensors"].problem or "")
    assert "implausible" in (entries["huge.safetensors"].problem or "")
    assert "looks like a lora" in (entries["misplaced_lora.safetensors"].problem or "")


@pytest.mark.timeout(30)
def test_only_the_header_is_read(tmp_path):
    """The header comes through a pipe that never delivers the tensor data: reading past it would block."""
    tensors = {"emb_params": {"dtype": "F16", "shape": [2, 4], "data_offsets": [0, 16]}}
    header_only = raw_safetensors(tensors, b"")
    fifo = tmp_path / "e.safetensors"
    os.mkfifo(fifo)
    returned = threading.Event()
    released_by_reader: list[bool] = []

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(header_only)
            pipe.flush()
            released_by_reader.append(returned.wait(20))  # the pipe stays open: no EOF to end a longer read

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        header = read_header(fifo, file_size=len(header_only) + 16)
    finally:
        returned.set()
        feeder.join()
    assert released_by_reader == [True]
    assert header.tensors["emb_params"].shape == (2, 4)
    assert header.data_end == len(header_only) + 16


def test_pickle_listed_but_refused_unless_allowed(models_dir, make_registry):
    (models_dir / "checkpoints" / "old.ckpt").write_bytes(b"\x80\x04pickle")
    entry = make_registry().entries()[0]
    assert entry.format == "pickle" and not entry.usable and "WORKER_ALLOW_PICKLE" in (entry.problem or "")
    (models_dir / "registry.json").unlink()
    assert make_registry(allow_pickle=True).entries()[0].usable


def test_warm_scan_hashes_nothing(models_dir, make_registry, hasher):
    for spec in ("checkpoint-sd15", "lora-sdxl", "embedding-sd15"):
        write_model(models_dir, spec)
    registry = make_registry()
    first = registry.scan()
    assert first.hashed == 3 and len(hasher.calls) == 3
    second = make_registry().scan()  # a fresh process-like instance reads the cache from disk
    assert second.hashed == 0 and len(hasher.calls) == 3
    path = write_model(models_dir, "lora-sdxl", seed=3)  # content (and mtime) changed
    third = registry.scan()
    assert third.hashed == 1 and hasher.calls[-1] == path


def test_hashes_match_a1111_and_kohya(models_dir, make_registry):
    path = write_model(models_dir, "lora-sdxl")
    data = path.read_bytes()
    entry = make_registry().entries()[0]
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    (n,) = struct.unpack("<Q", data[:8])
    assert entry.addnet_hash == hashlib.sha256(data[8 + n :]).hexdigest()
    assert hash_file(path).sha256 == entry.sha256


def test_removed_file_is_forgotten_and_hidden_files_skipped(models_dir, make_registry):
    path = write_model(models_dir, "checkpoint-sd15")
    write_model(models_dir, "checkpoint-sd15", ".half-written.safetensors")  # our temp names start with "."
    registry = make_registry()
    assert [e.file_name for e in registry.entries()] == ["checkpoint-sd15.safetensors"]
    path.unlink()
    assert registry.scan().removed == ["checkpoint/checkpoint-sd15.safetensors"]


PIPELINES = {
    "checkpoint-sd15": "sd15",
    "checkpoint-sdxl": "sdxl",
    "checkpoint-sd2": "is an SD2.x checkpoint",
    "checkpoint-sdxl_refiner": "is an SDXL refiner checkpoint",
    "checkpoint-flux": "is a FLUX checkpoint",
    "vae-unknown": "is not an SD1.x/SDXL checkpoint",
}


@pytest.mark.parametrize("spec", sorted(PIPELINES))
def test_which_pipeline_a_single_file_needs(tmp_path, spec):
    header = read_header(write_model(tmp_path, spec))
    if PIPELINES[spec] in ("sd15", "sdxl"):
        assert checkpoint_pipeline(header.tensors, header.metadata, name="m") == PIPELINES[spec]
    else:
        with pytest.raises(UnsupportedCheckpoint, match=f"^m {PIPELINES[spec]}"):
            checkpoint_pipeline(header.tensors, header.metadata, name="m")


@pytest.mark.engine
@pytest.mark.parametrize("spec", sorted(PIPELINES))
def test_the_engine_loads_the_pipeline_the_registry_detects(tmp_path, spec):
    """One definition of SD1.5 vs SDXL: the embedded engine must agree with ``detect.checkpoint_pipeline``."""
    pipelines = pytest.importorskip("diffusers_server.models.pipelines")
    path = write_model(tmp_path, spec)
    header = read_header(path)
    try:
        registry_says = checkpoint_pipeline(header.tensors, header.metadata, name=path.name)
    except UnsupportedCheckpoint:
        registry_says = None
    try:
        engine_says = pipelines.inspect_checkpoint(path)[0]
    except pipelines.ModelLoadError:
        engine_says = None
    assert engine_says == registry_says
