"""Downloads against the real loopback server with injected faults."""

from __future__ import annotations

import hashlib
import logging

import pytest
from filelock import FileLock

from tests.registry.conftest import catalogue_doc
from tests.registry.fixtures import model_bytes
from tests.support.clock import FakeClock
from worker.errors import DownloadFailed, ModelIncompatible, ModelNotFound

BODY = model_bytes("checkpoint-sd15", seed=1) + b""  # a few KB is enough: chunking is exercised by drops
SHA = hashlib.sha256(BODY).hexdigest()
TOKEN = "hf_secret_token_value_123"


def hf_entry(**extra):
    entry = {
        "id": "deliberate-v6",
        "kind": "checkpoint",
        "file_name": "Deliberate_v6.safetensors",
        "architecture": "sd15",
        "sha256": SHA,
        "source": {"type": "huggingface", "repo": "XpucT/Deliberate", "file": "Deliberate_v6.safetensors"},
    }
    entry.update(extra)
    return catalogue_doc(entry)


HF_PATH = "/hf/XpucT/Deliberate/resolve/main/Deliberate_v6.safetensors"


def no_leftovers(models_dir):
    return [p.name for p in (models_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_download_then_present(models_dir, make_registry, model_server):
    model_server.add(HF_PATH, BODY)
    registry = make_registry(hf_entry())
    got = registry.provision("checkpoint", "deliberate-v6")
    assert got.downloaded and got.seconds >= 0 and got.facts.sha256 == SHA
    assert (models_dir / "checkpoints" / "Deliberate_v6.safetensors").read_bytes() == BODY
    entry = registry.entries()[0]
    assert (
        entry.downloaded
        and entry.source["repo"] == "XpucT/Deliberate"
        and entry.registry_id == "deliberate-v6"
    )
    again = registry.provision("checkpoint", "Deliberate_v6")
    assert not again.downloaded and len(model_server.gets(HF_PATH)) == 1
    assert no_leftovers(models_dir) == []


def test_dropped_connection_resumes_with_range(models_dir, make_registry, model_server):
    model_server.add(HF_PATH, BODY, drop_after=len(BODY) // 3)
    got = make_registry(hf_entry()).provision("checkpoint", "deliberate-v6")
    assert got.downloaded and got.facts.sha256 == SHA
    ranges = [r.headers.get("range") for r in model_server.gets(HF_PATH)]
    assert ranges == [None, f"bytes={len(BODY) // 3}-"]
    assert (models_dir / "checkpoints" / "Deliberate_v6.safetensors").read_bytes() == BODY


def test_server_ignoring_range_restarts_cleanly(models_dir, make_registry, model_server):
    model_server.add(HF_PATH, BODY, drop_after=100, honour_range=False)
    got = make_registry(hf_entry()).provision("checkpoint", "deliberate-v6")
    assert got.facts.sha256 == SHA


def test_wrong_hash_leaves_nothing(models_dir, make_registry, model_server):
    model_server.add(HF_PATH, model_bytes("checkpoint-sd15", seed=2))
    with pytest.raises(DownloadFailed, match="sha256 mismatch"):
        make_registry(hf_entry()).provision("checkpoint", "deliberate-v6")
    assert not (models_dir / "checkpoints" / "Deliberate_v6.safetensors").exists()
    assert no_leftovers(models_dir) == []


def test_500_then_success(make_registry, model_server):
    model_server.add(HF_PATH, BODY, fail_statuses=[500, 503])
    assert make_registry(hf_entry()).provision("checkpoint", "deliberate-v6").downloaded
    assert len(model_server.gets(HF_PATH)) == 3


def test_persistent_404_is_not_retried(make_registry, model_server):
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        make_registry(hf_entry()).provision("checkpoint", "deliberate-v6")
    assert len(model_server.gets(HF_PATH)) == 1


def test_slow_server_hits_the_deadline(models_dir, make_registry, model_server):
    """The body trickles in one byte at a time; every deadline check moves the clock 0.1 s on."""
    model_server.add(HF_PATH, BODY, trickle_s=0.01)
    clock = FakeClock(start=0.0, monotonic_step=0.1)
    registry = make_registry(hf_entry(), download_deadline_s=1.0, clock=clock)
    registry.warm()
    started = clock.mono
    with pytest.raises(DownloadFailed, match="ran past its deadline"):
        registry.provision("checkpoint", "deliberate-v6")
    assert 1.0 <= clock.mono - started <= 1.5  # stopped at the deadline, mid-body, not after the whole file
    assert len(model_server.gets(HF_PATH)) == 1  # a deadline is final: no retry
    assert no_leftovers(models_dir) == []


def test_retries_back_off_on_the_clock(make_registry, model_server):
    model_server.add(HF_PATH, BODY, fail_statuses=[503, 503, 429])
    clock = FakeClock(start=0.0)
    registry = make_registry(hf_entry(), clock=clock, backoff_s=2.0, attempts=4)
    assert registry.provision("checkpoint", "deliberate-v6").downloaded
    assert len(model_server.gets(HF_PATH)) == 4
    assert clock.sleeps == [2.0, 4.0, 8.0]  # exponential, and only between attempts


def test_a_download_held_by_another_worker_times_out(models_dir, make_registry, model_server):
    model_server.add(HF_PATH, BODY)
    (models_dir / ".locks").mkdir()
    other_worker = FileLock(str(models_dir / ".locks" / "deliberate-v6.lock"))
    other_worker.acquire()
    clock = FakeClock(start=0.0)
    registry = make_registry(hf_entry(), clock=clock, download_deadline_s=30.0)
    try:
        with pytest.raises(DownloadFailed, match=r"another worker is still downloading .* after 30s"):
            registry.provision("checkpoint", "deliberate-v6")
    finally:
        other_worker.release()
    assert 30.0 <= sum(clock.sleeps) < 30.1  # polled on the clock for the whole wait, then gave up
    assert model_server.gets(HF_PATH) == []
    assert registry.provision("checkpoint", "deliberate-v6").downloaded  # free again: it goes through


def test_redirect_outside_allowlist_refused(models_dir, make_registry, model_server):
    model_server.add("/elsewhere.safetensors", BODY)
    model_server.add(HF_PATH, redirect_to=model_server.url_on("localhost") + "/elsewhere.safetensors")
    with pytest.raises(DownloadFailed, match="refused redirect"):
        make_registry(hf_entry()).provision("checkpoint", "deliberate-v6")
    assert model_server.gets("/elsewhere.safetensors") == []
    # the same redirect inside the allowlist is followed
    model_server.add(HF_PATH, redirect_to=model_server.url + "/elsewhere.safetensors")
    assert make_registry(hf_entry()).provision("checkpoint", "deliberate-v6").downloaded


def test_content_disposition_traversal_refused(models_dir, make_registry, model_server):
    model_server.add(
        HF_PATH, BODY, headers={"Content-Disposition": 'attachment; filename="../../evil.safetensors"'}
    )
    with pytest.raises(DownloadFailed, match="Content-Disposition"):
        make_registry(hf_entry()).provision("checkpoint", "deliberate-v6")
    assert not list(models_dir.parent.rglob("evil.safetensors"))


def test_html_error_page_is_not_saved_as_model(models_dir, make_registry, model_server):
    model_server.add(HF_PATH, b"<html>login</html>", content_type="text/html")
    with pytest.raises(DownloadFailed, match="text/html"):
        make_registry(hf_entry(sha256=None)).provision("checkpoint", "deliberate-v6")
    model_server.add(HF_PATH, b'{"error":"unauthorized"}')  # wrong type announced as binary
    with pytest.raises(DownloadFailed, match="not a valid safetensors"):
        make_registry(hf_entry(sha256=None)).provision("checkpoint", "deliberate-v6")
    assert not (models_dir / "checkpoints" / "Deliberate_v6.safetensors").exists()


def test_size_cap_and_disk_check(make_registry, model_server):
    model_server.add(HF_PATH, BODY)
    with pytest.raises(DownloadFailed, match="WORKER_DOWNLOAD_MAX_BYTES"):
        make_registry(hf_entry(), max_bytes=100).provision("checkpoint", "deliberate-v6")
    assert len(model_server.gets(HF_PATH)) == 1  # refused on Content-Length, body never written
    with pytest.raises(DownloadFailed, match="free space"):
        make_registry(hf_entry(size=len(BODY)), disk_free=lambda _p: 1000).provision(
            "checkpoint", "deliberate-v6"
        )
    assert len(model_server.gets(HF_PATH)) == 1  # known size: refused before any request


def test_token_sent_only_to_its_host_and_never_logged(make_registry, model_server, caplog):
    model_server.add(HF_PATH, BODY, fail_statuses=[500])
    caplog.set_level(logging.DEBUG)
    make_registry(hf_entry(), hf_token=TOKEN, civitai_token="civitai_secret_abc").provision(
        "checkpoint", "deliberate-v6"
    )
    assert {r.headers.get("authorization") for r in model_server.gets(HF_PATH)} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text and "civitai_secret_abc" not in caplog.text
    other = "/hf/o/r/resolve/main/private.safetensors"
    model_server.add(other, BODY, fail_statuses=[403])
    catalogue = catalogue_doc(
        {
            "id": "private",
            "kind": "lora",
            "file_name": "private.safetensors",
            "source": {"type": "huggingface", "repo": "o/r", "file": "private.safetensors"},
        }
    )
    with pytest.raises(DownloadFailed, match="not authorised") as err:
        make_registry(catalogue, hf_token=TOKEN).provision("lora", "private")
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text


def test_hf_linked_etag_is_verified(models_dir, make_registry, model_server):
    """Hugging Face announces the LFS sha256 on the redirect; it is checked when the catalogue has none."""
    model_server.add("/cdn/blob", BODY)
    model_server.add(
        HF_PATH, redirect_to=model_server.url + "/cdn/blob", headers={"X-Linked-ETag": f'"{"0" * 64}"'}
    )
    with pytest.raises(DownloadFailed, match="sha256 mismatch"):
        make_registry(hf_entry(sha256=None)).provision("checkpoint", "deliberate-v6")
    model_server.add(
        HF_PATH, redirect_to=model_server.url + "/cdn/blob", headers={"X-Linked-ETag": f'"{SHA}"'}
    )
    got = make_registry(hf_entry(sha256=None)).provision("checkpoint", "deliberate-v6")
    assert got.downloaded and got.notes == ()


CIVITAI_MODEL = {
    "id": 1590699,
    "type": "Checkpoint",
    "modelVersions": [
        {"id": 2002, "name": "v3.0 Newer", "baseModel": "Illustrious", "files": []},
        {
            "id": 1001,
            "name": "v2.0 Revelation",
            "baseModel": "Illustrious",
            "files": [
                {
                    "name": "jib.ckpt",
                    "type": "Model",
                    "metadata": {"format": "PickleTensor"},
                    "downloadUrl": "PLACEHOLDER/ckpt",
                    "hashes": {},
                },
                {
                    "name": "jibMixIllustrious_v20.safetensors",
                    "type": "Model",
                    "primary": True,
                    "metadata": {"format": "SafeTensor"},
                    "sizeKB": 16.5,
                    "downloadUrl": "PLACEHOLDER/v1/download/models/1001",
                    "hashes": {"SHA256": "SHAPLACEHOLDER"},
                },
            ],
        },
    ],
}


def civitai_setup(model_server, body):
    import json

    doc = json.loads(
        json.dumps(CIVITAI_MODEL)
        .replace("SHAPLACEHOLDER", hashlib.sha256(body).hexdigest().upper())  # before its own suffix
        .replace("PLACEHOLDER", model_server.url + "/api")
    )
    model_server.add_json("/api/v1/models/1590699", doc)
    version = dict(doc["modelVersions"][1], modelId=1590699, model={"type": "Checkpoint"})
    model_server.add_json("/api/v1/model-versions/1001", version)
    model_server.add(
        "/api/v1/download/models/1001",
        body,
        headers={"Content-Disposition": 'attachment; filename="other.safetensors"'},
    )


def test_civitai_catalogue_entry_by_version_name(models_dir, make_registry, model_server):
    body = model_bytes("checkpoint-sdxl", seed=4)
    civitai_setup(model_server, body)
    catalogue = catalogue_doc(
        {
            "id": "jib",
            "kind": "checkpoint",
            "pinned": True,
            "source": {
                "type": "civitai",
                "model_id": 1590699,
                "version_id": None,
                "version_name": "v2.0 Revelation",
            },
        }
    )
    registry = make_registry(catalogue, civitai_token="civitai_secret_abc")
    got = registry.provision("checkpoint", "jib")
    assert got.downloaded and got.facts.file_name == "jibMixIllustrious_v20.safetensors"
    assert got.facts.architecture == "sdxl" and got.facts.registry_id == "jib"
    assert (
        model_server.gets("/api/v1/download/models/1001")[0].headers["authorization"]
        == "Bearer civitai_secret_abc"
    )
    entry = registry.entries()[0]
    assert entry.source == {
        "type": "civitai",
        "model_id": 1590699,
        "version_id": 1001,
        "version_name": "v2.0 Revelation",
    }
    # now present: found by civitai reference without any network call
    before = len(model_server.requests)
    assert not registry.provision("checkpoint", "civitai:1590699@1001").downloaded
    assert len(model_server.requests) == before


def test_civitai_explicit_reference_and_errors(models_dir, make_registry, model_server):
    body = model_bytes("checkpoint-sdxl", seed=5)
    civitai_setup(model_server, body)
    registry = make_registry()
    got = registry.provision("checkpoint", "civitai:1590699@1001")
    assert got.downloaded and got.facts.sha256 == hashlib.sha256(body).hexdigest()
    with pytest.raises(ModelIncompatible, match="not a lora"):
        registry.provision("lora", "civitai:1590699@1001")
    with pytest.raises(ModelNotFound):
        registry.provision("checkpoint", "civitai:42")


def test_quota_evicts_lru_unpinned_downloads(models_dir, make_registry, model_server):
    bodies = {}
    entries = []
    for i in range(3):
        bodies[i] = model_bytes("lora-sd15", seed=i)
        model_server.add(f"/files/l{i}.safetensors", bodies[i])
        entries.append(
            {
                "id": f"l{i}",
                "kind": "lora",
                "file_name": f"l{i}.safetensors",
                "pinned": i == 0,
                "source": {"type": "url", "url": model_server.url + f"/files/l{i}.safetensors"},
            }
        )
    size = len(bodies[0])
    clock = FakeClock(start=0.0)
    registry = make_registry(catalogue_doc(*entries), quota_bytes=int(size * 2.5), clock=clock)
    registry.provision("lora", "l0")
    clock.advance(1)
    registry.provision("lora", "l1")
    clock.advance(1)
    registry.record_use("lora", "l0.safetensors")  # l0 is now the most recently used
    registry.provision("lora", "l2")  # needs room: l1 (unpinned, least recently used) goes, l0 is pinned
    names = sorted(e.file_name for e in registry.entries())
    assert names == ["l0.safetensors", "l2.safetensors"]
    assert not (models_dir / "loras" / "l1.safetensors").exists()
