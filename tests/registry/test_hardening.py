"""Issue 9: only regular files inside the models folder are read, within deadlines; a declared sha256 is
always verified; per-job lookups never rescan the whole volume and never rewrite the registry."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from tests.registry.clock import ManualClock
from tests.registry.conftest import catalogue_doc
from tests.registry.fixtures import model_bytes, write_model
from worker.errors import DownloadFailed, ModelIncompatible
from worker.registry.models import LiveRegistry
from worker.registry.store import RegistryStore

pytestmark = pytest.mark.timeout(30)


def _entry(registry, key):
    return registry.snapshot().models[key]


def test_fifo_in_a_model_folder_is_unusable_and_never_opened(models_dir, make_registry, hasher):
    os.mkfifo(models_dir / "vae" / "pipe.safetensors")  # open() on it would block forever
    write_model(models_dir, "vae-unknown")
    registry = make_registry()
    started = time.monotonic()
    registry.scan()
    assert time.monotonic() - started < 5
    entry = _entry(registry, "vae/pipe.safetensors")
    assert not entry.usable and "FIFO" in (entry.problem or "")
    assert models_dir / "vae" / "pipe.safetensors" not in hasher.calls
    with pytest.raises(ModelIncompatible, match="FIFO"):
        registry.describe("vae", "pipe")
    assert _entry(registry, "vae/vae-unknown.safetensors").usable


@pytest.mark.parametrize("target", ["/dev/zero", "outside"])
def test_symlink_out_of_the_models_folder_is_refused(models_dir, tmp_path, make_registry, hasher, target):
    if target == "outside":
        outside = tmp_path / "secret.safetensors"  # a real model file, but outside the volume's folder
        outside.write_bytes(model_bytes("checkpoint-sd15"))
        target = str(outside)
    link = models_dir / "checkpoints" / "linked.safetensors"
    link.symlink_to(target)
    registry = make_registry()
    registry.scan()
    entry = _entry(registry, "checkpoint/linked.safetensors")
    assert not entry.usable and "outside the models folder" in (entry.problem or "")
    assert entry.sha256 is None and link not in hasher.calls
    with pytest.raises(ModelIncompatible, match="outside the models folder"):
        registry.describe("checkpoint", "linked")


def test_symlink_inside_the_models_folder_is_followed(models_dir, make_registry):
    real = write_model(models_dir, "lora-sd15", "shared/real.safetensors")
    (models_dir / "loras" / "alias.safetensors").symlink_to(real)
    facts = make_registry().describe("lora", "alias")
    assert facts is not None and facts.sha256 == hashlib.sha256(real.read_bytes()).hexdigest()


def test_hashing_stops_at_the_scan_deadline(models_dir, make_registry):
    write_model(models_dir, "checkpoint-sd15")
    registry = make_registry()
    registry.scan(deadline_s=0)  # header read and registered, hash left for the next scan
    entry = _entry(registry, "checkpoint/checkpoint-sd15.safetensors")
    assert entry.usable and entry.sha256 is None
    registry.scan()
    assert _entry(registry, "checkpoint/checkpoint-sd15.safetensors").sha256 is not None


def test_declared_sha256_is_verified_even_for_a_url_already_downloaded(
    models_dir, model_server, make_registry
):
    body = model_bytes("lora-sd15")
    model_server.add("/f/shared.safetensors", body)
    url = f"{model_server.url}/f/shared.safetensors"
    catalogue = catalogue_doc(
        {
            "id": "good",
            "kind": "lora",
            "sha256": hashlib.sha256(body).hexdigest(),
            "source": {"type": "url", "url": url},
        },
        {"id": "other", "kind": "lora", "sha256": "ab" * 32, "source": {"type": "url", "url": url}},
    )
    registry = make_registry(catalogue)
    assert registry.provision("lora", "good") is not None
    with pytest.raises(DownloadFailed, match="sha256 mismatch"):
        registry.provision("lora", "other")  # same URL, other declared hash: never served good's file


def test_file_named_like_a_catalogue_entry_but_with_another_hash_is_never_served_or_overwritten(
    models_dir, model_server, make_registry
):
    body = model_bytes("lora-sd15", seed=1)
    model_server.add("/f/style.safetensors", body)
    local = write_model(models_dir, "lora-sd15", "style.safetensors", seed=2)  # same name, other content
    catalogue = catalogue_doc(
        {
            "id": "style-v1",
            "kind": "lora",
            "file_name": "style.safetensors",
            "sha256": hashlib.sha256(body).hexdigest(),
            "source": {"type": "url", "url": f"{model_server.url}/f/style.safetensors"},
        }
    )
    registry = make_registry(catalogue)
    with pytest.raises(ModelIncompatible, match=r"style\.safetensors.*style-v1"):
        registry.provision("lora", "style-v1")
    assert local.read_bytes() == model_bytes("lora-sd15", seed=2)  # the operator's file is kept
    facts = registry.describe("lora", "style")  # by its own name it is the local file, not the entry
    assert facts is not None and facts.registry_id is None


def test_corrupt_registry_backups_in_the_same_second_do_not_overwrite_each_other(models_dir):
    path = models_dir / "cache_registry.json"
    store = RegistryStore(path, clock=ManualClock())  # time stands still: the same second every time
    for text in ("{broken one", "{broken two"):
        path.write_text(text)
        store.update(lambda registry: None)
    backups = sorted(p.read_text() for p in models_dir.glob("cache_registry.json.corrupt-*"))
    assert backups == ["{broken one", "{broken two"]


def test_a_miss_does_not_rescan_the_volume(models_dir, make_registry, hasher):
    write_model(models_dir, "checkpoint-sd15")
    registry = make_registry()
    registry.warm()
    write_model(models_dir, "lora-sd15", "late.safetensors")  # added after the start-up scan
    hasher.calls.clear()
    assert registry.describe("checkpoint", "no-such-model") is None
    assert registry.describe("checkpoint", "no-such-model") is None
    assert hasher.calls == []  # the checkpoints folder did not change: nothing was scanned
    assert "lora/late.safetensors" not in registry.snapshot().models
    facts = registry.describe("lora", "late")  # its folder changed: only that folder is rescanned
    assert facts is not None and hasher.calls == [models_dir / "loras" / "late.safetensors"]


def test_a_replaced_file_is_reinspected_on_lookup(models_dir, make_registry):
    path = write_model(models_dir, "lora-sd15", "swap.safetensors")
    registry = make_registry()
    registry.warm()
    path.write_bytes(model_bytes("lora-sdxl"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    facts = registry.describe("lora", "swap")
    assert facts is not None and facts.architecture == "sdxl"


def test_a_warm_lookup_reads_the_registry_file_once(models_dir, make_registry, monkeypatch):
    write_model(models_dir, "checkpoint-sd15")
    registry = make_registry()
    registry.warm()
    parses = []
    real = LiveRegistry.model_validate_json
    monkeypatch.setattr(LiveRegistry, "model_validate_json", lambda data: parses.append(1) or real(data))
    for _ in range(20):
        assert registry.describe("checkpoint", "checkpoint-sd15") is not None
    assert parses == []  # unchanged file: served from the cached snapshot and index


def test_uses_are_batched_into_one_write(models_dir, make_registry):
    write_model(models_dir, "lora-sd15", "a.safetensors")
    registry = make_registry(usage_flush_s=60)
    registry.warm()
    before = (models_dir / "cache_registry.json").stat().st_mtime_ns
    for _ in range(5):
        registry.record_use("lora", "a.safetensors")
    assert (models_dir / "cache_registry.json").stat().st_mtime_ns == before  # nothing written per job
    registry.flush_uses()
    entry = LiveRegistry.model_validate_json((models_dir / "cache_registry.json").read_bytes()).models[
        "lora/a.safetensors"
    ]
    assert entry.use_count == 5 and entry.last_used is not None
