"""Registry store recovery, schema versions, and the CLI end to end."""

from __future__ import annotations

import json
import logging
import os

import pytest

from tests.registry.conftest import catalogue_doc, registry_kwargs
from tests.registry.fixtures import model_bytes, write_model
from worker.errors import RegistryError
from worker.registry.cli import main
from worker.registry.registry import ModelRegistry
from worker.settings import WorkerSettings


def test_corrupt_registry_moved_aside_and_rebuilt(models_dir, make_registry, caplog):
    write_model(models_dir, "checkpoint-sd15")
    (models_dir / "registry.json").write_text('{"schema_version": 1, "models": {"x": 5')
    caplog.set_level(logging.WARNING)
    entries = make_registry().entries()
    assert [e.file_name for e in entries] == ["checkpoint-sd15.safetensors"]
    aside = list(models_dir.glob("registry.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().endswith('"x": 5')
    assert "corrupt" in caplog.text


def test_newer_schema_is_refused_not_destroyed(models_dir, make_registry):
    (models_dir / "registry.json").write_text('{"schema_version": 99, "models": {}}')
    with pytest.raises(RegistryError, match="schema_version 99"):
        make_registry().scan()
    assert json.loads((models_dir / "registry.json").read_text())["schema_version"] == 99


def test_a_registry_under_its_old_name_is_adopted_not_lost(models_dir, tmp_path, caplog):
    """Volumes written before the rename keep their registry (sources, downloads, use counts)."""
    write_model(models_dir, "lora-sd15", "a.safetensors")
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text('{"schema_version": 1, "models": []}')
    legacy = models_dir / "cache_registry.json"
    old_worker = ModelRegistry(**registry_kwargs(models_dir, None, None) | {"registry_path": legacy})
    old_worker.warm()
    old_worker.record_use("lora", "a.safetensors")
    old_worker.flush_uses()
    history = legacy.read_bytes()
    caplog.set_level(logging.INFO)
    settings = WorkerSettings(models_dir=models_dir, catalogue_path=catalogue)
    registry = ModelRegistry.from_settings(settings)
    (entry,) = registry.entries()
    assert entry.key == "lora/a.safetensors" and entry.use_count == 1
    assert (models_dir / "registry.json").read_bytes() == history and not legacy.exists()
    assert "cache_registry.json renamed to registry.json" in caplog.text
    # an explicit WORKER_REGISTRY_PATH is taken as it is: an old-named file beside it is left alone
    legacy.write_bytes(history)
    explicit = ModelRegistry.from_settings(
        settings.model_copy(update={"registry_path": tmp_path / "own.json"})
    )
    assert [e.use_count for e in explicit.entries()] == [0] and legacy.read_bytes() == history


def test_cli_commands(models_dir, make_registry, model_server, capsys):
    write_model(models_dir, "checkpoint-sd15", "Deliberate_v6.safetensors")
    write_model(models_dir, "lora-sdxl", "detail.safetensors")
    model_server.add("/f/new.safetensors", model_bytes("lora-sd15"))
    catalogue = catalogue_doc(
        {"id": "deliberate-v6", "kind": "checkpoint", "file_name": "Deliberate_v6.safetensors"},
        {
            "id": "new-lora",
            "kind": "lora",
            "file_name": "new.safetensors",
            "source": {"type": "url", "url": f"{model_server.url}/f/new.safetensors"},
        },
    )
    registry = make_registry(catalogue)
    assert main(["scan"], registry=registry) == 0
    assert "2 files: 2 added" in capsys.readouterr().out
    assert main(["list", "--json"], registry=registry) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["present"]) == 2 and [c["id"] for c in listed["catalogue_not_present"]] == ["new-lora"]
    assert main(["list"], registry=registry) == 0
    assert "Deliberate_v6.safetensors" in capsys.readouterr().out
    assert main(["show", "deliberate-v6", "--json"], registry=registry) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["present"]["architecture"] == "sd15" and shown["catalogue"]["id"] == "deliberate-v6"
    assert main(["pull", "new-lora"], registry=registry) == 0
    assert "downloaded lora new.safetensors" in capsys.readouterr().out
    assert main(["verify"], registry=registry) == 0
    capsys.readouterr()
    path = models_dir / "loras" / "detail.safetensors"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # silent corruption: same size and mtime
    assert main(["verify"], registry=registry) == 1
    assert "sha256 changed" in capsys.readouterr().out
    assert main(["gc"], registry=registry) == 0
    assert main(["show", "nope"], registry=registry) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_from_environment(models_dir, monkeypatch, capsys, tmp_path):
    write_model(models_dir, "embedding-sd15", "easyneg.safetensors")
    monkeypatch.setenv("WORKER_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("WORKER_REGISTRY_PATH", str(tmp_path / "reg.json"))
    assert main(["list", "--kind", "embedding"]) == 0
    assert "easyneg.safetensors" in capsys.readouterr().out
    assert (tmp_path / "reg.json").exists()
    monkeypatch.setenv("WORKER_CATALOGUE_PATH", str(tmp_path / "missing.json"))
    assert main(["list"]) == 1
    assert "cannot read catalogue" in capsys.readouterr().err


def test_repo_catalogue_is_valid_and_honest():
    from worker.registry.catalogue import load_catalogue
    from worker.settings import DEFAULT_CATALOGUE_PATH

    catalogue = load_catalogue(DEFAULT_CATALOGUE_PATH)
    by_id = {e.id: e for e in catalogue.models}
    assert by_id["deliberate-v6"].source.type == "huggingface"
    assert by_id["jib-mix-illustrious-realistic-v2"].source.model_dump()["model_id"] == 1590699
    weights = sorted(e.default_weight for e in catalogue.models if e.kind == "lora")
    assert weights == [0.3, 0.4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 3.0]
    assert all(e.sha256 is None for e in catalogue.models)  # unknown: never invented
