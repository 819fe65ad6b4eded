"""``worker.startup.prepare_engine``: readiness deadline, default checkpoint pre-load, timeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.fake_a1111 import FakeA1111, dead_pid, write_pid_file
from worker.a1111.client import A1111Client
from worker.errors import EngineUnavailable, ModelNotFound
from worker.settings import WorkerSettings
from worker.startup import prepare_engine


def _settings(url: str, tmp_path: Path, **kw: object) -> WorkerSettings:
    return WorkerSettings(a1111_url=url, models_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_preloads_the_default_checkpoint_and_logs_the_timeline(
    fake_a1111: FakeA1111, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = write_pid_file(tmp_path / "engine.pid")
    settings = _settings(fake_a1111.url, tmp_path, default_checkpoint="base_xl", engine_pid_file=pid_file)
    caplog.set_level("INFO")
    timeline = prepare_engine(A1111Client(fake_a1111.url, pid_file=pid_file), settings)
    options = [r.body for r in fake_a1111.requests_to("options", "POST")]
    assert options == [{"sd_model_checkpoint": "sdxl/base_xl.safetensors [fedcba9876]"}]
    # one generation waits for A1111's own background load (POST /options during it races), one warms up
    assert len(fake_a1111.requests_to("txt2img")) == 2
    first_options = fake_a1111.requests_to("options", "POST")[0].at
    assert fake_a1111.requests_to("txt2img")[0].at < first_options < fake_a1111.requests_to("txt2img")[1].at
    phases = [name for name, _ in timeline.marks]
    assert timeline.origin_label == "engine_process_start"
    assert phases == ["worker_start", "port_open", "model_loaded", "warmed_up", "ready"]
    assert "start-up timeline: engine_process_start 0.0s" in caplog.text


def test_the_default_checkpoint_already_selected_is_not_loaded_again(
    fake_a1111: FakeA1111, tmp_path: Path
) -> None:
    settings = _settings(fake_a1111.url, tmp_path, default_checkpoint="demo")
    timeline = prepare_engine(A1111Client(fake_a1111.url), settings)
    assert fake_a1111.requests_to("options", "POST") == []
    assert len(fake_a1111.requests_to("txt2img")) == 1  # waiting for the load was the warm-up
    assert [name for name, _ in timeline.marks] == ["port_open", "model_loaded", "warmed_up", "ready"]


def test_unknown_default_checkpoint_names_the_nearest(fake_a1111: FakeA1111, tmp_path: Path) -> None:
    settings = _settings(fake_a1111.url, tmp_path, default_checkpoint="demo2", warmup=False)
    with pytest.raises(ModelNotFound, match=r"demo\.safetensors"):
        prepare_engine(A1111Client(fake_a1111.url), settings)


def test_dead_engine_fails_at_once(fake_a1111: FakeA1111, tmp_path: Path) -> None:
    fake_a1111.stop()
    pid_file = write_pid_file(tmp_path / "engine.pid", dead_pid())
    settings = _settings(fake_a1111.url, tmp_path, ready_timeout_s=30, engine_pid_file=pid_file)
    clock = FakeClock()
    with pytest.raises(EngineUnavailable, match="exited"):
        prepare_engine(A1111Client(fake_a1111.url, pid_file=pid_file, clock=clock), settings, clock=clock)
    assert clock.sleeps == []  # no wait at all, 30 s before the deadline


def test_deadline_is_kept(tmp_path: Path) -> None:
    settings = _settings("http://127.0.0.1:9", tmp_path, ready_timeout_s=1)
    clock = FakeClock()
    with pytest.raises(EngineUnavailable, match="deadline"):
        prepare_engine(
            A1111Client("http://127.0.0.1:9", connect_timeout_s=0.5, clock=clock), settings, clock=clock
        )
    assert clock.sleeps == [0.5, 0.5]  # polled until WORKER_READY_TIMEOUT_S, not a moment longer


def test_the_registry_is_scanned_while_the_engine_starts(fake_a1111: FakeA1111, tmp_path: Path) -> None:
    from tests.registry.fixtures import write_model
    from worker.handler import JobRunner
    from worker.registry.models import Catalogue, LiveRegistry
    from worker.registry.registry import ModelRegistry

    models = tmp_path / "models"
    write_model(models, "lora-sd15", "early.safetensors")
    registry = ModelRegistry(
        models_dir=models,
        registry_path=models / "registry.json",
        catalogue=Catalogue(),
        allowed_hosts=(),
    )
    settings = _settings(fake_a1111.url, models, warmup=False)
    prepare_engine(JobRunner(settings, A1111Client(fake_a1111.url), provider=registry), settings)
    on_disk = LiveRegistry.model_validate_json((models / "registry.json").read_bytes())
    assert on_disk.scanned_at is not None
    assert on_disk.models["lora/early.safetensors"].sha256 is not None  # hashed before the first job
