"""Registry jobs end to end: the handler, the real registry on real files, a loopback file server standing in
for Hugging Face and plain URLs, and the fake A1111 (whose refresh endpoints must be called).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import catalogue_doc, registry_kwargs
from tests.registry.fixtures import model_bytes, raw_safetensors, write_model
from tests.registry.training_fixtures import lora_tensors, write_lora, write_pipeline_skeleton
from tests.support.fake_a1111 import FakeA1111
from tests.support.fixtures import job_fixture, job_names
from tests.support.model_server import ModelServer, model_server  # noqa: F401  (fixture)
from tests.support.polling import poll_until
from worker import handler as handler_module
from worker.a1111.client import A1111Client
from worker.handler import JobRunner, async_handler, set_runner
from worker.model_job_types import ListAction, ModelJobRequest
from worker.registry.jobs import RegistryJobs
from worker.registry.registry import ModelRegistry
from worker.schema import parse_job_input
from worker.settings import WorkerSettings

HF_TOKEN = "hf_job_secret_0123456789"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for sub in ("checkpoints", "loras", "embeddings", "vae"):
        (root / sub).mkdir(parents=True)
    return root


class Setup:
    """A runner over ``models_dir`` whose registry downloads from the loopback server only."""

    def __init__(self, fake: FakeA1111, models_dir: Path, server: ModelServer) -> None:
        self.fake, self.models_dir, self.server = fake, models_dir, server
        self.updates: list[dict[str, Any]] = []

    def runner(
        self, *, allow: bool = True, catalogue: dict[str, Any] | None = None, **over: Any
    ) -> JobRunner:
        settings = WorkerSettings.model_validate(
            {"a1111_url": self.fake.url, "models_dir": self.models_dir, "allow_model_jobs": allow, **over}
        )
        registry = ModelRegistry(**registry_kwargs(self.models_dir, self.server, catalogue))
        jobs = RegistryJobs(registry, engine="a1111", interval_s=0.0001)
        engine = A1111Client(self.fake.url, connect_timeout_s=1, request_timeout_s=5)
        return JobRunner(
            settings,
            engine,
            provider=registry,
            model_jobs=jobs,
            progress_sink=lambda job, update: self.updates.append(update),
        )

    def run(self, job_input: dict[str, Any], **over: Any) -> dict[str, Any]:
        out = self.runner(**over).run({"id": "model-job", "input": job_input})
        assert isinstance(out, dict)
        return out

    def refreshed(self) -> list[str]:
        return [r.path.rsplit("/", 1)[-1] for r in self.fake.requests if "/refresh-" in r.path]

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.models_dir.rglob(".*.part"))


@pytest.fixture
def setup(fake_a1111: FakeA1111, models_dir: Path, model_server: ModelServer) -> Setup:  # noqa: F811
    return Setup(fake_a1111, models_dir, model_server)


def serve(server: ModelServer, path: str, body: bytes, **headers: str) -> str:
    server.add(path, body, headers=headers)
    return f"{server.url}{path}"


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# ---- permission and forms ---------------------------------------------------------------------------


def test_registry_jobs_are_off_unless_the_deployment_allows_them(setup: Setup) -> None:
    out = setup.run({"registry": {"action": "list"}}, allow=False)
    assert out["error"].startswith("input_invalid: registry jobs are off on this worker")
    assert "WORKER_ALLOW_MODEL_JOBS=true" in out["error"]
    peer = setup.run(job_fixture("peer_download")["input"], allow=False)
    assert "WORKER_ALLOW_MODEL_JOBS" in peer["error"]
    assert not list(setup.models_dir.rglob("*.safetensors"))


@pytest.mark.parametrize(
    ("fixture", "action", "form"),
    [
        ("registry_list", "list", "registry"),
        ("registry_pull", "pull", "registry"),
        ("registry_sync", "sync", "registry"),
        ("registry_convert", "convert", "registry"),
        ("registry_remove", "remove", "registry"),
        ("registry_evict", "evict", "registry"),
        ("peer_download", "pull", "envelope"),
        ("peer_sync", "sync", "envelope"),
    ],
)
def test_every_registry_fixture_parses_to_its_action(fixture: str, action: str, form: str) -> None:
    request = parse_job_input(job_fixture(fixture)["input"], max_images=8)
    assert isinstance(request, ModelJobRequest)
    assert request.action.action == action and request.form == form


def test_every_registry_and_peer_fixture_is_covered() -> None:
    names = {name for name in job_names() if name.startswith(("registry_", "peer_"))}
    covered = test_every_registry_fixture_parses_to_its_action.pytestmark[0].args[1]  # type: ignore[attr-defined]
    assert names == {fixture for fixture, _, _ in covered}


def test_an_unknown_action_names_the_valid_ones(setup: Setup) -> None:
    out = setup.run({"registry": {"action": "download", "ref": "x"}})
    assert out["error"].startswith("input_invalid:")
    assert "'list', 'pull', 'remove', 'evict', 'convert', 'sync'" in out["error"]


def test_post_options_is_refused_with_what_to_do_instead(setup: Setup) -> None:
    out = setup.run(job_fixture("bad_envelope_endpoint")["input"])
    assert out["error"].startswith("input_invalid: api.method 'POST' is not allowed for options")
    assert "one worker of many" in out["error"]
    assert "`checkpoint`" in out["error"] and "`vae`" in out["error"]
    assert "WORKER_DEFAULT_CHECKPOINT" in out["error"]


# ---- list -------------------------------------------------------------------------------------------


def test_list_shows_each_kind_with_hashes_architecture_and_why_a_file_is_unusable(setup: Setup) -> None:
    write_model(setup.models_dir, "checkpoint-sdxl", "base.safetensors")
    write_model(setup.models_dir, "lora-sdxl", "detail.safetensors")
    write_lora(setup.models_dir / "loras" / "peft_style.safetensors", lora_tensors(layout="peft"))
    (setup.models_dir / "vae" / "broken.safetensors").write_bytes(raw_safetensors({"x": {}}, b"")[:6])
    out = setup.run({"registry": {"action": "list"}})
    assert "error" not in out, out
    listing = out["registry"]
    assert listing["engine"] == "a1111"
    assert listing["counts"] == {
        "checkpoint": 1,
        "lora": 2,
        "embedding": 0,
        "vae": 1,
        "controlnet": 0,
        "adetailer": 0,
        "upscaler": 0,
    }
    (checkpoint,) = listing["models"]["checkpoint"]
    body = (setup.models_dir / "checkpoints" / "base.safetensors").read_bytes()
    assert checkpoint["sha256"] == sha(body) and checkpoint["short_hash"] == sha(body)[:10]
    assert (
        checkpoint["architecture"] == "sdxl" and checkpoint["usable"] is True and checkpoint["reason"] is None
    )
    peft = next(m for m in listing["models"]["lora"] if m["file_name"] == "peft_style.safetensors")
    assert peft["usable"] is False and peft["layout"] == "peft"
    assert "A1111 would skip every one of its keys silently" in peft["reason"]
    (vae,) = listing["models"]["vae"]
    assert vae["usable"] is False and vae["reason"]
    assert setup.refreshed() == []  # listing changes nothing


# ---- pull -------------------------------------------------------------------------------------------


def test_pull_a_url_with_its_sha256_reports_progress_and_rescans_the_engine(setup: Setup) -> None:
    body = model_bytes("lora-sdxl", seed=3)
    url = serve(setup.server, "/files/style.safetensors", body)
    out = setup.run(
        {"registry": {"action": "pull", "ref": url + "?X-Signature=abc", "kind": "lora", "sha256": sha(body)}}
    )
    assert "error" not in out, out
    pulled = out["registry"]
    assert pulled["path"] == "loras/style.safetensors" and pulled["downloaded"] is True
    assert pulled["sha256"] == sha(body) and pulled["sha256_verified"] is True
    assert "X-Signature" not in json.dumps(out)  # a signed URL's query is never echoed
    assert (setup.models_dir / "loras" / "style.safetensors").read_bytes() == body
    assert out["refreshed"] == ["loras"] and setup.refreshed() == ["refresh-loras"]
    last = setup.updates[-1]["registry"]
    assert last["action"] == "pull" and last["bytes_done"] == len(body) and last["bytes_total"] == len(body)

    again = setup.run({"registry": {"action": "pull", "ref": url, "kind": "lora", "sha256": sha(body)}})
    assert again["registry"]["downloaded"] is False and again["refreshed"] == []


def test_a_runner_drops_its_cached_engine_lists_after_a_registry_job_changed_a_folder(setup: Setup) -> None:
    runner = setup.runner()
    runner.engine.catalog()
    listed = len(setup.fake.requests_to("loras", "GET"))
    runner.engine.catalog()
    assert len(setup.fake.requests_to("loras", "GET")) == listed  # cached
    url = serve(setup.server, "/files/new.safetensors", model_bytes("lora-sdxl", seed=15))
    runner.run({"id": "p", "input": {"registry": {"action": "pull", "ref": url, "kind": "lora"}}})
    runner.engine.catalog()
    assert len(setup.fake.requests_to("loras", "GET")) == listed + 1  # fetched again after the rescan


def test_a_url_pull_needs_its_kind_and_accepts_an_upper_case_sha256(setup: Setup) -> None:
    body = model_bytes("lora-sdxl", seed=17)
    url = serve(setup.server, "/files/upper.safetensors", body)
    out = setup.run({"registry": {"action": "pull", "ref": url}})
    assert out["error"] == (
        f"input_invalid: pull of {url} needs `kind` or a `dest` inside a model folder: "
        "which folder does it go to?"
    )
    out = setup.run(
        {"registry": {"action": "pull", "ref": url, "dest": "loras", "sha256": sha(body).upper()}}
    )
    assert out["registry"]["sha256"] == sha(body) and out["registry"]["path"] == "loras/upper.safetensors"


def test_a_pull_whose_sha256_differs_leaves_nothing_behind(setup: Setup) -> None:
    url = serve(setup.server, "/files/bad.safetensors", model_bytes("lora-sdxl", seed=4))
    out = setup.run({"registry": {"action": "pull", "ref": url, "kind": "lora", "sha256": "0" * 64}})
    assert out["error"].startswith("download_failed: bad.safetensors: sha256 mismatch")
    assert "nothing was done" in out["error"]
    assert not (setup.models_dir / "loras" / "bad.safetensors").exists() and setup.leftovers() == []
    assert setup.refreshed() == []


def test_pull_hugging_face_and_catalogue_references_resolve_as_jobs_do(setup: Setup) -> None:
    body = model_bytes("checkpoint-sd15", seed=5)
    setup.server.add(
        "/hf/owner/repo/resolve/main/sub/model.safetensors", body, headers={"X-Linked-ETag": sha(body)}
    )
    out = setup.run(
        {"registry": {"action": "pull", "ref": "hf:owner/repo/sub/model.safetensors", "kind": "checkpoint"}}
    )
    assert out["registry"]["path"] == "checkpoints/model.safetensors" and out["registry"]["sha256_verified"]
    assert setup.refreshed() == ["refresh-checkpoints"]

    lora = model_bytes("lora-sd15", seed=6)
    url = serve(setup.server, "/cat/lora.safetensors", lora)
    catalogue = catalogue_doc(
        {
            "id": "my-lora",
            "kind": "lora",
            "file_name": "mine.safetensors",
            "sha256": sha(lora),
            "source": {"type": "url", "url": url},
        }
    )
    out = setup.run({"registry": {"action": "pull", "ref": "my-lora"}}, catalogue=catalogue)
    assert out["registry"]["kind"] == "lora" and out["registry"]["path"] == "loras/mine.safetensors"


def test_pull_a_civitai_reference_takes_its_kind_and_name_from_civitai(setup: Setup) -> None:
    from tests.registry.test_download import civitai_setup

    body = model_bytes("checkpoint-sdxl", seed=18)
    civitai_setup(setup.server, body)
    out = setup.run({"registry": {"action": "pull", "ref": "civitai:1590699@1001"}})
    assert "error" not in out, out
    pulled = out["registry"]
    assert (
        pulled["kind"] == "checkpoint" and pulled["path"] == "checkpoints/jibMixIllustrious_v20.safetensors"
    )
    assert pulled["sha256"] == sha(body) and pulled["sha256_verified"] is True  # Civitai's hashes.SHA256
    assert out["refreshed"] == ["checkpoints"]


# ---- the peer's envelope forms ----------------------------------------------------------------------


def peer_download(setup: Setup, url: str, download_path: str) -> dict[str, Any]:
    job = job_fixture("peer_download")["input"]
    job["payload"] = {"source_url": url, "download_path": download_path}
    return setup.run(job)


def test_the_peers_download_payload_works_inside_the_models_folder(setup: Setup) -> None:
    body = model_bytes("lora-sdxl", seed=7)
    url = serve(setup.server, "/files/4x-style.safetensors", body)
    target = setup.models_dir / "loras" / "upscaled" / "renamed.safetensors"
    out = peer_download(setup, url, str(target))
    assert "error" not in out, out
    assert out["msg"] == "Download successful" and out["download_path"] == str(target)
    assert out["source_url"] == url and out["registry"]["kind"] == "lora"
    assert target.read_bytes() == body and setup.refreshed() == ["refresh-loras"]


@pytest.mark.parametrize(
    "where",
    [
        "/workspace/stable-diffusion-webui/models/ESRGAN/4x-UltraSharp.pth",  # the peer's own example path
        "{models}/../outside.safetensors",
        "{models}/loras/../../outside.safetensors",
        "{models}/registry.json",
        "{models}/loras/escape/evil.safetensors",  # a symlink out of the volume
        "{models}/loras/.locks/x.safetensors",
    ],
)
def test_the_peers_download_payload_is_refused_outside_the_model_folders(
    setup: Setup, where: str, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (setup.models_dir / "loras" / "escape").symlink_to(tmp_path / "elsewhere")
    url = serve(setup.server, "/files/x.safetensors", model_bytes("lora-sdxl"))
    path = where.format(models=setup.models_dir)
    out = peer_download(setup, url, path)
    assert out["error"].startswith(
        f"input_invalid: path {path!r} is not inside a model folder of this worker"
    )
    assert setup.server.gets("/files/x.safetensors") == []
    assert not list(tmp_path.rglob("*.safetensors"))


def hf_tree(setup: Setup, repo: str, files: dict[str, bytes], *, lie: dict[str, str] | None = None) -> None:
    """Serve ``files`` as Hugging Face serves a repository: the tree API and resolve URLs."""
    items: list[dict[str, Any]] = [{"type": "file", "path": "README.md", "size": 5, "oid": "abc"}]
    for path, body in files.items():
        digest = (lie or {}).get(path, sha(body))
        items.append(
            {"type": "file", "path": path, "size": len(body), "lfs": {"oid": digest, "size": len(body)}}
        )
        setup.server.add(f"/hf/{repo}/resolve/main/{path}", body)
    items.append({"type": "directory", "path": "Lora"})
    setup.server.add_json(f"/hf/api/models/{repo}/tree/main", items)


def test_the_peers_sync_payload_fills_each_kind_folder_once_and_never_shows_the_token(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    files = {
        "Lora/a.safetensors": model_bytes("lora-sdxl", seed=8),
        "checkpoints/sub/b.safetensors": model_bytes("checkpoint-sd15", seed=9),
        "Other/c.safetensors": model_bytes("lora-sd15", seed=10),
        "top.safetensors": model_bytes("lora-sd15", seed=11),
    }
    hf_tree(setup, "ashleykleynhans/a1111", files)
    job = job_fixture("peer_sync")["input"]
    job["payload"] = {**job["payload"], "hf_token": HF_TOKEN, "sync_path": str(setup.models_dir)}
    out = setup.run(job)
    assert "error" not in out, out
    assert out["synced_count"] == 2
    assert out["synced_files"] == [
        str(setup.models_dir / "loras" / "a.safetensors"),
        str(setup.models_dir / "checkpoints" / "sub" / "b.safetensors"),
    ]
    skipped = {s["file"]: s["reason"] for s in out["registry"]["skipped"]}
    assert set(skipped) == {"Other/c.safetensors", "top.safetensors"}
    assert all(reason.startswith("not in a model folder") for reason in skipped.values())
    assert sorted(out["refreshed"]) == ["checkpoints", "loras"]
    listing_call = setup.server.gets("/hf/api/models/ashleykleynhans/a1111/tree/main")[0]
    assert listing_call.headers["authorization"] == f"Bearer {HF_TOKEN}"  # the job's own token, to HF only
    assert HF_TOKEN not in json.dumps(out) and HF_TOKEN not in caplog.text
    assert setup.updates[-1]["registry"]["files_done"] == 2

    again = setup.run(job)
    assert again["synced_count"] == 0 and len(again["registry"]["present"]) == 2
    assert len(setup.server.gets("/hf/ashleykleynhans/a1111/resolve/main/Lora/a.safetensors")) == 1


def test_a_sync_stopped_by_a_bad_file_says_what_was_done_and_leaves_no_partial_file(setup: Setup) -> None:
    files = {
        "a.safetensors": model_bytes("lora-sdxl", seed=12),
        "b.safetensors": model_bytes("lora-sdxl", seed=13),
    }
    hf_tree(setup, "owner/styles", files, lie={"b.safetensors": "1" * 64})
    out = setup.run(
        {"registry": {"action": "sync", "repo": "owner/styles", "dest": "loras/pack", "hf_token": HF_TOKEN}}
    )
    assert out["error"].startswith("download_failed: pack/b.safetensors: sha256 mismatch")
    assert (
        "sync stopped at loras/pack/b.safetensors; done before it stopped: loras/pack/a.safetensors"
        in out["error"]
    )
    assert (setup.models_dir / "loras" / "pack" / "a.safetensors").is_file()
    assert not (setup.models_dir / "loras" / "pack" / "b.safetensors").exists() and setup.leftovers() == []
    assert HF_TOKEN not in out["error"]


def test_a_private_repository_without_a_token_is_refused_without_echoing_any(setup: Setup) -> None:
    setup.server.add("/hf/api/models/owner/private/tree/main", b"no", fail_statuses=[401])
    out = setup.run({"registry": {"action": "sync", "repo": "owner/private", "hf_token": HF_TOKEN}})
    assert out["error"].startswith("model_not_found: Hugging Face repository owner/private")
    assert HF_TOKEN not in out["error"]


def test_a_cancelled_pull_stops_at_the_next_chunk_and_leaves_no_file(setup: Setup) -> None:
    body = os.urandom(64) + model_bytes("lora-sdxl", seed=14)
    url = serve(setup.server, "/files/slow.safetensors", body)
    setup.server.routes["/files/slow.safetensors"].trickle_s = 0.001
    runner = setup.runner()
    runner.progress_sink = lambda job, update: runner.cancelled.set()
    out = runner.run({"id": "c", "input": {"registry": {"action": "pull", "ref": url, "kind": "lora"}}})
    assert isinstance(out, dict)
    assert out["error"].startswith("cancelled: registry pull cancelled; nothing was done")
    assert not (setup.models_dir / "loras" / "slow.safetensors").exists() and setup.leftovers() == []


def test_runpods_cancel_stops_a_registry_job_run_by_the_async_handler(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    url = serve(setup.server, "/files/slow2.safetensors", model_bytes("lora-sdxl", seed=16))
    setup.server.routes["/files/slow2.safetensors"].trickle_s = 0.001
    set_runner(setup.runner())

    async def cancel_once_it_progresses() -> None:
        job = {"id": "c2", "input": {"registry": {"action": "pull", "ref": url, "kind": "lora"}}}
        task = asyncio.create_task(async_handler(job))
        while not setup.updates:
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(asyncio.wait_for(cancel_once_it_progresses(), timeout=20))
        poll_until(
            lambda: True if "registry pull cancelled" in caplog.text else None,
            "the job thread stopping at its next chunk",
            timeout_s=20,
        )
    finally:
        handler_module._runner = None
    assert not (setup.models_dir / "loras" / "slow2.safetensors").exists() and setup.leftovers() == []


# ---- remove, evict, convert -------------------------------------------------------------------------


def test_remove_deletes_a_model_by_name_or_path_and_rescans(setup: Setup) -> None:
    write_model(setup.models_dir, "lora-sdxl", "old.safetensors")
    write_model(setup.models_dir, "lora-sdxl", "older.safetensors", seed=1)
    out = setup.run({"registry": {"action": "remove", "ref": "old", "kind": "lora"}})
    assert out["registry"]["removed"] == "loras/old.safetensors" and out["refreshed"] == ["loras"]
    out = setup.run({"registry": {"action": "remove", "ref": "loras/older.safetensors"}})
    assert out["registry"]["removed"] == "loras/older.safetensors"
    assert not list((setup.models_dir / "loras").glob("*.safetensors"))
    missing = setup.run({"registry": {"action": "remove", "ref": "old", "kind": "lora"}})
    assert missing["error"].startswith("model_not_found: lora 'old' not found")


def test_evict_removes_least_recently_used_downloads_down_to_a_size(setup: Setup) -> None:
    bodies = {name: model_bytes("lora-sdxl", seed=i) for i, name in enumerate(("a", "b", "c"))}
    runner = setup.runner()
    for name, body in bodies.items():
        url = serve(setup.server, f"/files/{name}.safetensors", body)
        runner.run({"id": name, "input": {"registry": {"action": "pull", "ref": url, "kind": "lora"}}})
    assert runner.provider is not None
    runner.provider.record_use("lora", "a.safetensors")  # a is used last: b and c go first
    keep_gb = (len(bodies["a"]) + 10) / 1e9
    dry = runner.run(
        {"id": "d", "input": {"registry": {"action": "evict", "target_gb": keep_gb, "dry_run": True}}}
    )
    assert isinstance(dry, dict) and dry["registry"]["evicted"] == [
        "loras/b.safetensors",
        "loras/c.safetensors",
    ]
    assert (setup.models_dir / "loras" / "b.safetensors").exists()
    out = runner.run({"id": "e", "input": {"registry": {"action": "evict", "target_gb": keep_gb}}})
    assert isinstance(out, dict) and out["registry"]["total_bytes_after"] == len(bodies["a"])
    assert sorted(p.name for p in (setup.models_dir / "loras").iterdir() if not p.name.startswith(".")) == [
        "a.safetensors"
    ]
    write_model(setup.models_dir, "lora-sdxl", "mine.safetensors", seed=9)  # copied in by hand: never evicted
    refused = runner.run({"id": "f", "input": {"registry": {"action": "evict", "target_gb": 0}}})
    assert isinstance(refused, dict) and refused["error"].startswith(
        "input_invalid: cannot evict down to 0.0 GB"
    )


def test_convert_turns_a_training_output_into_what_a1111_reads(setup: Setup) -> None:
    write_lora(
        setup.models_dir / "loras" / "run" / "pytorch_lora_weights.safetensors",
        lora_tensors(layout="diffusers"),
    )
    out = setup.run({"registry": {"action": "convert", "src": "loras/run"}})
    assert "error" not in out, out
    (conversion,) = out["registry"]["conversions"]
    assert conversion["status"] == "converted" and conversion["output"] == "lora/run/run-kohya.safetensors"
    assert (setup.models_dir / "loras" / "run" / "run-kohya.safetensors").is_file()
    assert out["refreshed"] == ["loras"]
    again = setup.run({"registry": {"action": "convert", "src": "loras/run"}})
    assert again["registry"]["conversions"][0]["status"] == "reused" and again["refreshed"] == []


# ---- model folders (diffusers, PEFT) synced whole ---------------------------------------------------


def git_oid(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def hf_folder_tree(
    setup: Setup, repo: str, folder: Path, *, under: str = "", lie: dict[str, str] | None = None
) -> dict[str, bytes]:
    """Serve the files of ``folder`` below ``under`` as Hugging Face does: weights in LFS (sha256), the rest
    in git (a blob sha1 only); returns them by repository path."""
    files = {
        (f"{under}/" if under else "") + p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    items: list[dict[str, Any]] = []
    for path, body in files.items():
        item: dict[str, Any] = {"type": "file", "path": path, "size": len(body), "oid": git_oid(body)}
        if path.endswith(".safetensors"):
            item["lfs"] = {"oid": sha(body), "size": len(body)}
        item["oid"] = (lie or {}).get(path, item["oid"])
        items.append(item)
        text = "text/plain; charset=utf-8"  # as Hugging Face serves a file stored in git
        setup.server.add(
            f"/hf/{repo}/resolve/main/{path}", body, **({} if "lfs" in item else {"content_type": text})
        )
    setup.server.add_json(f"/hf/api/models/{repo}/tree/main" + (f"/{under}" if under else ""), items)
    return files


def test_a_diffusers_repository_syncs_as_one_folder_that_list_then_reports(
    setup: Setup, tmp_path: Path
) -> None:
    source = write_pipeline_skeleton(tmp_path / "repo")
    (source / "README.md").write_text("# a fine-tune")
    (source / "unet" / "train.py").write_text("import os")
    files = hf_folder_tree(setup, "owner/finetune", source)
    out = setup.run({"registry": {"action": "sync", "repo": "owner/finetune", "dest": "checkpoints"}})
    assert "error" not in out, out
    assert out["registry"]["downloaded"] == ["checkpoints/finetune"]
    skipped = {s["file"] for s in out["registry"]["skipped"]}
    assert skipped == {"README.md", "unet/train.py"}
    synced = setup.models_dir / "checkpoints" / "finetune"
    for path, body in files.items():
        assert (synced / path).exists() == (path not in skipped)
        assert path in skipped or (synced / path).read_bytes() == body
    assert [p.name for p in (setup.models_dir / "checkpoints").iterdir()] == [
        "finetune"
    ]  # no hidden leftovers
    assert out["refreshed"] == ["checkpoints"]

    listing = setup.run({"registry": {"action": "list", "kind": "checkpoint"}})["registry"]
    (entry,) = listing["models"]["checkpoint"]
    assert entry["file_name"] == "finetune" and entry["format"] == "diffusers"
    assert entry["architecture"] == "sd15" and entry["usable_by"] == ["embedded"]
    embedded = RegistryJobs(
        ModelRegistry(**registry_kwargs(setup.models_dir, setup.server, None)), engine="embedded"
    )
    (usable,) = embedded.run(
        ListAction(action="list", kind="checkpoint"), report=lambda u: None, cancelled=lambda: False
    ).output["models"]["checkpoint"]
    assert usable["usable"] is True and usable["reason"] is None

    again = setup.run({"registry": {"action": "sync", "repo": "owner/finetune", "dest": "checkpoints"}})
    assert again["registry"]["present"] == ["checkpoints/finetune"] and again["registry"]["downloaded"] == []


def test_a_folder_whose_config_fails_its_git_sha1_leaves_nothing_under_its_name(
    setup: Setup, tmp_path: Path
) -> None:
    source = write_pipeline_skeleton(tmp_path / "repo")
    hf_folder_tree(setup, "owner/finetune", source, lie={"vae/config.json": "0" * 40})
    out = setup.run({"registry": {"action": "sync", "repo": "owner/finetune", "dest": "checkpoints"}})
    assert out["error"].startswith("download_failed: vae/config.json: git blob sha1 mismatch"), out
    assert "sync stopped at checkpoints/finetune; nothing was done" in out["error"]
    assert list((setup.models_dir / "checkpoints").iterdir()) == []  # neither the folder nor its hidden copy
    assert setup.refreshed() == []


def test_a_peft_lora_folder_syncs_whole_into_loras(setup: Setup, tmp_path: Path) -> None:
    source = tmp_path / "repo"
    write_lora(source / "adapter_model.safetensors", lora_tensors(layout="peft"))
    (source / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": "sd15"}))
    hf_folder_tree(setup, "owner/styles", source, under="style-v2")
    out = setup.run({"registry": {"action": "sync", "repo": "owner/styles", "folder": "style-v2"}})
    assert "error" not in out, out
    assert out["registry"]["downloaded"] == ["loras/style-v2"]
    synced = setup.models_dir / "loras" / "style-v2"
    assert sorted(p.name for p in synced.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    listing = setup.run({"registry": {"action": "list", "kind": "lora"}})["registry"]
    assert [m["file_name"] for m in listing["models"]["lora"]] == ["style-v2"]


def test_a_folder_sync_cancelled_after_some_files_leaves_nothing_under_its_name(
    setup: Setup, tmp_path: Path
) -> None:
    source = write_pipeline_skeleton(tmp_path / "repo")
    hf_folder_tree(setup, "owner/finetune", source)
    runner = setup.runner()
    seen: list[str] = []

    def cancel_at_the_third_file(job: Any, update: dict[str, Any]) -> None:
        seen.append(update["registry"]["file"])
        if len(set(seen)) >= 3:
            runner.cancelled.set()

    runner.progress_sink = cancel_at_the_third_file
    job = {"registry": {"action": "sync", "repo": "owner/finetune", "dest": "checkpoints"}}
    out = runner.run({"id": "c", "input": job})
    assert isinstance(out, dict)
    assert out["error"].startswith("cancelled: registry sync cancelled; nothing was done"), out
    assert len(set(seen)) == 3  # it had begun the folder
    assert list((setup.models_dir / "checkpoints").iterdir()) == []
