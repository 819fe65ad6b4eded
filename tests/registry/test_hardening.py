"""Issue 9: only regular files inside the models folder are read, within deadlines; a declared sha256 is
always verified; per-job lookups never rescan the whole volume and never rewrite the registry."""

from __future__ import annotations

import errno
import hashlib
import os
import time

import pytest
from filelock import FileLock

from tests.registry.conftest import catalogue_doc
from tests.registry.fixtures import model_bytes, write_model
from tests.registry.training_fixtures import write_pipeline_skeleton
from tests.support.clock import FakeClock
from worker.errors import DownloadFailed, ModelIncompatible, RegistryError
from worker.registry.hashing import hash_file
from worker.registry.models import LiveRegistry
from worker.registry.store import RegistryLockTimeout, RegistryStore

pytestmark = pytest.mark.timeout(30)


def _entry(registry, key):
    return registry.snapshot().models[key]


def test_fifo_in_a_model_folder_is_unusable_and_never_opened(models_dir, make_registry, hasher):
    os.mkfifo(models_dir / "vae" / "pipe.safetensors")  # open() on it would block forever
    write_model(models_dir, "vae-unknown")
    registry = make_registry()
    registry.scan()  # opening the FIFO would block here until the module's timeout fails the test
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
    for name in ("a", "b", "c"):
        write_model(models_dir, "checkpoint-sd15", f"{name}.safetensors", seed=ord(name))
    clock = FakeClock(start=0.0)

    def six_seconds_a_file(path, addnet_offset=None, progress=None):
        clock.advance(6)
        return hash_file(path, addnet_offset, progress)

    registry = make_registry(clock=clock, hasher=six_seconds_a_file)
    registry.scan(deadline_s=10)  # a is hashed by t=6; b's hash is cut at t=12; c is not started
    hashed = {e.file_name: e.sha256 is not None for e in registry.entries()}
    assert hashed == {"a.safetensors": True, "b.safetensors": False, "c.safetensors": False}
    assert all(e.usable for e in registry.entries())  # registered (header read), only the hash waits
    registry.scan()  # the next scan, without a deadline, hashes what is left
    assert all(e.sha256 is not None for e in registry.entries())


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
    path = models_dir / "registry.json"
    store = RegistryStore(path, clock=FakeClock(start=0.0))  # time stands still: the same second every time
    for text in ("{broken one", "{broken two"):
        path.write_text(text)
        store.update(lambda registry: None)
    backups = sorted(p.read_text() for p in models_dir.glob("registry.json.corrupt-*"))
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


def test_a_hit_on_a_model_folder_rescans_nothing(models_dir, make_registry):
    write_pipeline_skeleton(models_dir / "checkpoints" / "finetune", "sd15")
    registry = make_registry()
    registry.warm()
    written = (models_dir / "registry.json").stat().st_mtime_ns
    for _ in range(3):
        assert registry.describe("checkpoint", "finetune").format == "diffusers"
    assert (models_dir / "registry.json").stat().st_mtime_ns == written  # a rescan would rewrite it


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


def test_uses_are_batched_into_one_write_when_the_timer_fires(models_dir, make_registry):
    write_model(models_dir, "lora-sd15", "a.safetensors")
    clock = FakeClock(start=0.0)
    registry = make_registry(usage_flush_s=10, clock=clock)
    registry.warm()
    path = models_dir / "registry.json"
    before = path.stat().st_mtime_ns
    for _ in range(5):
        registry.record_use("lora", "a.safetensors")
        clock.advance(1)
    assert path.stat().st_mtime_ns == before  # nothing written per job
    assert clock.pending_timers == [10.0]  # one timer, set by the first use
    clock.advance(5)  # 10 s after the first use the timer writes the batch
    entry = LiveRegistry.model_validate_json(path.read_bytes()).models["lora/a.safetensors"]
    assert entry.use_count == 5 and entry.last_used == clock.wall - 6  # the fifth use, at t=4
    assert clock.pending_timers == []
    registry.record_use("lora", "a.safetensors")
    registry.flush_uses()  # an explicit flush writes now and cancels the timer the use set
    assert clock.pending_timers == []
    assert LiveRegistry.model_validate_json(path.read_bytes()).models["lora/a.safetensors"].use_count == 6


def test_a_registry_lock_held_past_its_deadline_is_a_registry_error(models_dir):
    path = models_dir / "registry.json"
    hung_writer = FileLock(str(path) + ".lock")
    hung_writer.acquire()
    clock = FakeClock(start=0.0)
    store = RegistryStore(path, lock_timeout_s=60, clock=clock)
    try:
        with pytest.raises(RegistryLockTimeout, match="still held after 60s") as err:
            store.update(lambda registry: None)
    finally:
        hung_writer.release()
    assert err.value.code.value == "registry_error"
    assert 60 <= sum(clock.sleeps) < 60.1  # polled on the clock for the whole deadline
    assert not path.exists()
    store.update(lambda registry: None)  # released: the next write goes through
    assert path.exists()


def test_an_unwritable_registry_is_a_registry_error(models_dir, make_registry, monkeypatch):
    write_model(models_dir, "lora-sd15", "a.safetensors")
    registry = make_registry()
    registry.warm()
    before = (models_dir / "registry.json").read_bytes()

    def read_only_volume(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only_volume)  # the fault: the volume turned read-only
    write_model(models_dir, "lora-sd15", "b.safetensors")
    with pytest.raises(RegistryError, match=r"cannot write registry .*registry\.json: Read-only file system"):
        registry.scan()
    monkeypatch.undo()
    assert (models_dir / "registry.json").read_bytes() == before  # the old registry, whole
    assert not list(models_dir.glob(".registry.json.*.tmp"))  # and no temp file left behind
