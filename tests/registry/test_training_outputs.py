"""Training outputs on the volume: recognised by the scan, converted once by the CLI and the job path, with
lineage, atomic outputs, one conversion across processes, and refusals that name the fix."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from safetensors.numpy import load_file

from tests.registry.fixtures import write_model
from tests.registry.training_fixtures import (
    lora_tensors,
    write_lora,
    write_pipeline_skeleton,
    write_training_checkpoint,
)
from tests.registry.workers import convert_in_process
from worker.errors import ModelIncompatible
from worker.registry.cli import main
from worker.registry.conversions import CONVERTER_VERSION, ConversionFailed


def _volume(models_dir: Path) -> None:
    loras = models_dir / "loras"
    write_model(models_dir, "lora-sd15", "kohya.safetensors")
    write_lora(loras / "peft.safetensors", lora_tensors(layout="peft"))
    write_lora(loras / "styled.safetensors", lora_tensors(layout="diffusers", seed=1))
    write_lora(loras / "run" / "pytorch_lora_weights.safetensors", lora_tensors(layout="old", seed=2))
    write_training_checkpoint(loras / "run" / "checkpoint-100", step_seed=3)
    write_training_checkpoint(loras / "run" / "checkpoint-200", step_seed=4)
    write_model(models_dir, "checkpoint-sd15", "single.safetensors")
    write_pipeline_skeleton(models_dir / "checkpoints" / "finetune", "sdxl")


def test_scan_recognises_training_outputs_and_says_who_can_use_them(models_dir, make_registry):
    _volume(models_dir)
    entries = {e.key: e for e in make_registry().entries()}
    assert set(entries) == {
        "checkpoint/finetune",
        "checkpoint/single.safetensors",
        "lora/kohya.safetensors",
        "lora/peft.safetensors",
        "lora/styled.safetensors",
        "lora/run/pytorch_lora_weights.safetensors",
        "lora/run/checkpoint-100",
        "lora/run/checkpoint-200",
    }  # nothing inside a model folder (unet/…, model.safetensors, optimizer.bin) is a model of its own
    table = {key: (e.format, e.layout, e.usable_by, e.architecture) for key, e in entries.items()}
    assert table == {
        "checkpoint/finetune": ("diffusers", "diffusers", ["embedded"], "sdxl"),
        "checkpoint/single.safetensors": ("safetensors", "ldm", ["a1111", "embedded"], "sd15"),
        "lora/kohya.safetensors": ("safetensors", "kohya", ["a1111", "embedded"], "sd15"),
        "lora/peft.safetensors": ("safetensors", "peft", ["embedded"], "sd15"),
        "lora/styled.safetensors": ("safetensors", "diffusers", ["embedded"], "sd15"),
        "lora/run/pytorch_lora_weights.safetensors": ("safetensors", "diffusers", ["embedded"], "sd15"),
        "lora/run/checkpoint-100": ("training", "peft", [], "sd15"),
        "lora/run/checkpoint-200": ("training", "peft", [], "sd15"),
    }
    step = entries["lora/run/checkpoint-100"]
    assert step.details | {"lora_files": None} == {
        "step": 100,
        "rank": 2,
        "modules": 3,
        "optimizer_state": True,
        "base_model": None,
        "lora_files": None,
    }
    folder = entries["checkpoint/finetune"]
    assert folder.details["precision"] == "fp16" and folder.details["tokenizer"] is False
    assert folder.sha256 and folder.short_hash == folder.sha256[:10] and folder.usable
    assert entries["lora/peft.safetensors"].details["rank"] == 2


def test_cli_converts_a_lora_once_and_records_its_lineage(models_dir, make_registry, capsys):
    source = write_lora(models_dir / "loras" / "peft.safetensors", lora_tensors(layout="peft"))
    registry = make_registry()
    assert main(["convert", "peft"], registry=registry) == 0
    line = capsys.readouterr().out
    assert line.startswith("converted lora/peft.safetensors (PEFT layout) -> lora/peft-kohya.safetensors")
    output = models_dir / "loras" / "peft-kohya.safetensors"
    src, out = load_file(str(source)), load_file(str(output))
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    kohya = "lora_unet_" + module.replace(".", "_")
    assert np.array_equal(out[f"{kohya}.lora_down.weight"], src[f"{module}.lora_A.weight"])
    assert np.array_equal(out[f"{kohya}.lora_up.weight"], src[f"{module}.lora_B.weight"])
    assert float(out[f"{kohya}.alpha"]) == 2.0  # no alpha recorded: rank, diffusers' own assumption
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in out
    assert not list((models_dir / "loras").glob(".*"))  # no temp file left

    entry = {e.key: e for e in registry.entries()}["lora/peft-kohya.safetensors"]
    source_entry = {e.key: e for e in registry.entries()}["lora/peft.safetensors"]
    assert entry.lineage is not None
    assert (entry.lineage.source, entry.lineage.source_sha256, entry.lineage.converter) == (
        "lora/peft.safetensors",
        source_entry.sha256,
        CONVERTER_VERSION,
    )
    assert entry.layout == "kohya" and entry.usable_by == ["a1111", "embedded"] and entry.sha256

    mtime = output.stat().st_mtime_ns
    assert main(["convert", "peft"], registry=registry) == 0
    assert capsys.readouterr().out.startswith("already converted: lora/peft.safetensors")
    assert output.stat().st_mtime_ns == mtime
    assert main(["convert", "peft", "--force", "--alpha", "8", "--json"], registry=registry) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["status"] == "converted" and doc[0]["output"]["lineage"]["options"]["alpha"] == 8
    assert float(load_file(str(output))[f"{kohya}.alpha"]) == 8.0
    assert main(["convert", "peft-kohya"], registry=registry) == 0
    assert "nothing to convert" in capsys.readouterr().out


def test_cli_converts_a_whole_training_output_folder(models_dir, make_registry, capsys):
    _volume(models_dir)
    registry = make_registry()
    run = models_dir / "loras" / "run"
    assert main(["convert", str(run)], registry=registry) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("converted ") for line in lines)
    outputs = sorted(p.name for p in run.glob("*-kohya.safetensors"))
    assert outputs == [
        "run-kohya.safetensors",
        "run-step100-kohya.safetensors",
        "run-step200-kohya.safetensors",
    ]
    step = load_file(str(run / "run-step200-kohya.safetensors"))
    state = load_file(str(run / "checkpoint-200" / "model.safetensors"))
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    assert np.array_equal(
        step["lora_unet_" + module.replace(".", "_") + ".lora_down.weight"],
        state[f"{module}.lora_A.default.weight"],
    )
    assert not any("base_layer" in k for k in step)
    mtimes = {p: p.stat().st_mtime_ns for p in run.glob("*-kohya.safetensors")}
    assert main(["convert", str(run)], registry=registry) == 0
    again = capsys.readouterr().out.splitlines()
    assert len(again) == 3 and all(line.startswith("already converted:") for line in again)
    assert {p: p.stat().st_mtime_ns for p in run.glob("*-kohya.safetensors")} == mtimes


def test_failures_name_the_problem_and_leave_nothing_behind(models_dir, make_registry, capsys):
    loras = models_dir / "loras"
    broken = lora_tensors(layout="peft")
    del broken["mid_block.attentions.0.proj_in.lora_B.weight"]
    write_lora(loras / "half-written.safetensors", broken)
    cut = write_lora(loras / "cut.safetensors", lora_tensors(layout="peft")).read_bytes()
    (loras / "cut.safetensors").write_bytes(cut[:-100])
    registry = make_registry()
    before = {e.key: e.sha256 for e in registry.entries()}
    assert main(["convert", "half-written"], registry=registry) == 1
    assert "mid_block.attentions.0.proj_in lacks its up (B) matrix" in capsys.readouterr().err
    assert main(["convert", "cut"], registry=registry) == 1
    assert "truncated" in capsys.readouterr().err
    assert sorted(p.name for p in loras.iterdir()) == ["cut.safetensors", "half-written.safetensors"]
    assert {e.key: e.sha256 for e in registry.entries()} == before


def test_an_output_name_that_is_taken_is_not_overwritten(models_dir, make_registry, capsys):
    write_lora(models_dir / "loras" / "peft.safetensors", lora_tensors(layout="peft"))
    mine = write_model(models_dir, "lora-sd15", "peft-kohya.safetensors")
    registry = make_registry()
    assert main(["convert", "peft"], registry=registry) == 1
    assert (
        "loras/peft-kohya.safetensors exists and is not a conversion of peft.safetensors"
        in capsys.readouterr().err
    )
    assert mine.read_bytes() == write_model(models_dir, "lora-sd15", "same.safetensors").read_bytes()
    assert main(["convert", "peft", "--force"], registry=registry) == 0
    assert "lora_unet_mid_block_attentions_0_proj_in.alpha" in load_file(str(mine))


def test_two_processes_convert_the_same_model_once(models_dir, make_registry):
    write_lora(models_dir / "loras" / "big.safetensors", lora_tensors(layout="diffusers", rank=64))
    (source,) = make_registry().entries()
    lock = FileLock(str(models_dir / ".locks" / f"convert-{source.sha256[:16]}-a1111.lock"))
    (models_dir / ".locks").mkdir(exist_ok=True)
    lock.acquire()  # both processes must meet at the conversion lock before either may convert
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    arrived = [ctx.Event() for _ in range(2)]
    procs = [
        ctx.Process(target=convert_in_process, args=(str(models_dir), "big", event, queue))
        for event in arrived
    ]
    for proc in procs:
        proc.start()
    try:
        for event in arrived:
            assert event.wait(90), "a process never reached the conversion lock"
    finally:
        lock.release()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    assert [(status, output) for status, output, _notes in results] == [
        ("converted", "lora/big-kohya.safetensors"),
        ("reused", "lora/big-kohya.safetensors"),
    ]
    assert results[1][2] == ("converted by another worker",)  # it waited at the lock, then reused
    entries = [e for e in make_registry().entries() if e.lineage is not None]
    assert [e.key for e in entries] == ["lora/big-kohya.safetensors"]


def test_job_path_converts_for_a1111_or_refuses_with_the_command(models_dir, make_registry):
    write_lora(models_dir / "loras" / "peft.safetensors", lora_tensors(layout="peft"))
    write_lora(models_dir / "loras" / "styled.safetensors", lora_tensors(layout="diffusers"))
    strict = make_registry(auto_convert=False)
    with pytest.raises(ModelIncompatible) as refused:
        strict.convert_for("lora", "peft.safetensors", "a1111")
    assert refused.value.code.value == "model_incompatible"
    assert "A1111 would skip every one of its keys silently" in refused.value.message
    assert "python -m worker registry convert loras/peft.safetensors --to a1111" in refused.value.message
    assert (
        strict.convert_for("lora", "styled.safetensors", "embedded").facts.file_name == "styled.safetensors"
    )

    registry = make_registry()
    first = registry.convert_for("lora", "peft.safetensors", "a1111")
    assert (first.facts.file_name, first.converted_from, first.converted_now) == (
        "peft-kohya.safetensors",
        "peft.safetensors",
        True,
    )
    assert first.facts.usable_by == ("a1111", "embedded") and first.facts.layout == "kohya"
    second = registry.convert_for("lora", "peft.safetensors", "a1111")
    assert (second.facts.file_name, second.converted_now) == ("peft-kohya.safetensors", False)
    # the auto-conversion's output is the CLI's: the refusal now points at nothing to do
    assert strict.convert_for("lora", "peft.safetensors", "a1111").facts.file_name == "peft-kohya.safetensors"


def test_folders_that_cannot_convert_are_refused_clearly(models_dir, make_registry):
    write_pipeline_skeleton(models_dir / "checkpoints" / "finetune", "sd15")
    registry = make_registry()
    entry = {e.key: e for e in registry.entries()}["checkpoint/finetune"]
    assert registry.convert(entry, "diffusers").status == "not needed"
    with pytest.raises(ConversionFailed, match=r"unet tensor 'probe\.weight' has no A1111 counterpart"):
        registry.convert(entry, "a1111")
    assert sorted(p.name for p in (models_dir / "checkpoints").iterdir()) == ["finetune"]


def test_a_schema_1_registry_gains_layouts_without_rehashing(models_dir, make_registry, hasher):
    write_lora(models_dir / "loras" / "peft.safetensors", lora_tensors(layout="peft"))
    make_registry().scan()
    path = models_dir / "registry.json"
    doc = json.loads(path.read_text())
    doc["schema_version"] = 1
    for entry in doc["models"].values():
        for field in ("layout", "usable_by", "details", "lineage"):
            entry.pop(field, None)
    path.write_text(json.dumps(doc))
    hasher.calls.clear()
    registry = make_registry()
    registry.scan()
    entry = registry.entries()[0]
    assert (entry.layout, entry.usable_by) == ("peft", ["embedded"])
    assert hasher.calls == []  # only the header was read again
    assert json.loads(path.read_text())["schema_version"] == 2


def test_image_build_step_keeps_only_what_a1111_applies(models_dir, make_registry, capsys):
    """The Dockerfile's BAKE_MODEL step: ``convert <id> --to a1111 --remove-source`` after ``pull``."""
    write_lora(models_dir / "loras" / "peft.safetensors", lora_tensors(layout="peft"))
    write_model(models_dir, "lora-sd15", "kohya.safetensors")
    registry = make_registry()
    assert main(["convert", "peft", "--to", "a1111", "--remove-source"], registry=registry) == 0
    assert main(["convert", "kohya", "--to", "a1111", "--remove-source"], registry=registry) == 0
    out = capsys.readouterr().out
    assert "not needed: lora/kohya.safetensors (kohya layout) is already usable by a1111" in out
    assert sorted(p.name for p in (models_dir / "loras").iterdir()) == [
        "kohya.safetensors",
        "peft-kohya.safetensors",
    ]
    assert sorted(e.key for e in registry.entries()) == [
        "lora/kohya.safetensors",
        "lora/peft-kohya.safetensors",
    ]


def test_gc_removes_what_a_killed_conversion_left(models_dir, make_registry):
    stale = models_dir / "checkpoints" / ".finetune-diffusers.4242.part"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
    fresh = models_dir / "loras" / ".x-kohya.safetensors.4243.part"
    fresh.write_bytes(b"in progress")
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))
    actions = make_registry().gc()
    assert "removed stale partial download or conversion .finetune-diffusers.4242.part" in actions
    assert not stale.exists() and fresh.exists()  # a conversion still running is left alone


def test_the_cli_converts_in_an_environment_without_torch(models_dir, tmp_path):
    """The worker's venv in the image has no torch: ``python -m worker registry convert`` must not need it."""
    write_lora(models_dir / "loras" / "peft.safetensors", lora_tensors(layout="peft"))
    write_training_checkpoint(models_dir / "loras" / "run" / "checkpoint-7")
    blocker = tmp_path / "no_torch" / "sitecustomize.py"
    blocker.parent.mkdir()
    blocker.write_text(
        "import sys\nfor name in ('torch', 'diffusers', 'transformers', 'peft'):\n    sys.modules[name] = None\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{blocker.parent}{os.pathsep}{Path(__file__).resolve().parents[2]}",
        "WORKER_MODELS_DIR": str(models_dir),
        "WORKER_CATALOGUE_PATH": str(tmp_path / "catalogue.json"),
    }
    (tmp_path / "catalogue.json").write_text('{"schema_version": 1, "models": []}')
    for source in ("peft", str(models_dir / "loras" / "run")):
        done = subprocess.run(
            [sys.executable, "-m", "worker", "registry", "convert", source],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("converted "), done.stdout
    assert (models_dir / "loras" / "peft-kohya.safetensors").is_file()
    assert (models_dir / "loras" / "run" / "run-step7-kohya.safetensors").is_file()
