"""Contract tests of ``worker.a1111.client.A1111Client`` against a real loopback fake A1111 with injected faults."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.clock import FakeClock
from tests.support.fake_a1111 import (
    OOM_BODY,
    FakeA1111,
    a1111_error_body,
    dead_pid,
    validation_body,
    write_pid_file,
)
from worker.a1111.catalog import EngineCatalog
from worker.a1111.client import A1111Client
from worker.a1111.endpoints import LISTING_ENDPOINTS
from worker.a1111.progress import GenerationProgress
from worker.errors import (
    EngineFailed,
    EngineUnavailable,
    InputInvalid,
    JobTimeout,
    ModelNotFound,
    OutOfMemory,
)
from worker.settings import WorkerSettings

pytestmark = pytest.mark.timeout(20)

PAYLOAD: dict[str, Any] = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(fake_a1111: FakeA1111, clock: FakeClock) -> Iterator[A1111Client]:
    c = A1111Client(fake_a1111.url, connect_timeout_s=1.0, request_timeout_s=2.0, clock=clock)
    yield c
    c.close()


def free_port() -> int:
    """A loopback port with nothing listening on it (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RecordingSession(requests.Session):
    """Records the keyword arguments of every request, to check timeouts are always set."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        return super().request(method, url, *args, **kwargs)


# ------------------------------------------------------------------------------------------------
# Readiness and the engine process
# ------------------------------------------------------------------------------------------------


def test_ready_polls_then_warms_up(fake_a1111: FakeA1111, client: A1111Client, clock: FakeClock) -> None:
    fake_a1111.fail_times("sd-models", 2, status=503)  # the server answers, not ready yet
    took = client.wait_until_ready(5.0)
    assert clock.sleeps == [0.5, 0.5] and took == 1.0  # polled every 0.5 s until the third answer
    assert len(fake_a1111.requests_to("sd-models", "GET")) == 3
    (warm,) = fake_a1111.requests_to("txt2img", "POST")
    assert warm.body["steps"] == 1 and warm.body["width"] == 64 and warm.body["send_images"] is False


def test_ready_without_warmup_sends_no_generation(fake_a1111: FakeA1111, client: A1111Client) -> None:
    client.wait_until_ready(2.0, warmup=False)
    assert fake_a1111.requests_to("txt2img") == []


def test_never_ready_fails_at_the_deadline_with_last_error(
    fake_a1111: FakeA1111, client: A1111Client, clock: FakeClock
) -> None:
    fake_a1111.set_fault("sd-models", status=503, body={"detail": "starting"})
    with pytest.raises(EngineUnavailable) as info:
        client.wait_until_ready(1.0)
    assert clock.sleeps == [0.5, 0.5]  # two polls, then the deadline
    assert len(fake_a1111.requests_to("sd-models")) == 2
    assert "1 s deadline" in info.value.message and "HTTP 503" in info.value.message
    assert info.value.refresh_worker is True
    assert fake_a1111.requests_to("txt2img") == []


def test_never_ready_refused_port_fails_at_the_deadline(clock: FakeClock) -> None:
    client = A1111Client(f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.5, clock=clock)
    with pytest.raises(EngineUnavailable, match="connection refused"):
        client.wait_until_ready(0.8)
    assert clock.sleeps == pytest.approx([0.5, 0.3])  # the last wait is cut to the deadline


def test_dead_engine_process_fails_at_once(fake_a1111: FakeA1111, tmp_path: Path, clock: FakeClock) -> None:
    fake_a1111.set_fault("sd-models", status=503)
    pid = dead_pid()
    client = A1111Client(fake_a1111.url, pid_file=write_pid_file(tmp_path / "a1111.pid", pid), clock=clock)
    with pytest.raises(EngineUnavailable) as info:
        client.wait_until_ready(30.0)
    assert clock.sleeps == [] and fake_a1111.requests == []  # not one poll, not one wait
    assert f"pid {pid}" in info.value.message and "exited" in info.value.message


def test_engine_dying_during_polling_is_noticed(
    fake_a1111: FakeA1111, tmp_path: Path, clock: FakeClock
) -> None:
    fake_a1111.set_fault("sd-models", status=503)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    client = A1111Client(
        fake_a1111.url, pid_file=write_pid_file(tmp_path / "a1111.pid", proc.pid), clock=clock
    )

    def die_during_the_second_wait(_seconds: float) -> None:
        if len(clock.sleeps) == 2:
            proc.kill()
            proc.wait()

    clock.on_sleep.append(die_during_the_second_wait)
    try:
        with pytest.raises(EngineUnavailable, match="exited"):
            client.wait_until_ready(30.0)
    finally:
        proc.kill()
        proc.wait()
    assert clock.sleeps == [0.5, 0.5]  # noticed before a third poll, 29 s before the deadline
    assert len(fake_a1111.requests_to("sd-models")) == 2


def test_warmup_500_means_the_checkpoint_did_not_load(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault(
        "txt2img",
        status=500,
        body=a1111_error_body("AttributeError", "'NoneType' object has no attribute 'sd'"),
    )
    with pytest.raises(EngineUnavailable) as info:
        client.wait_until_ready(5.0)
    assert info.value.message.startswith("default checkpoint failed to load: AttributeError:")
    assert len(fake_a1111.requests_to("txt2img")) == 1


def test_warmup_is_bounded_by_the_readiness_deadline(fake_a1111: FakeA1111, clock: FakeClock) -> None:
    fake_a1111.set_fault("txt2img", hang=10)
    session = RecordingSession()
    client = A1111Client(fake_a1111.url, connect_timeout_s=1.0, session=session, clock=clock)
    fake_a1111.fail_times("sd-models", 1, status=503)  # 0.5 s of the 1 s deadline go to polling
    with pytest.raises(EngineUnavailable, match="warm-up"):
        client.wait_until_ready(1.0)
    (warmup,) = [call for call in session.calls if str(call["url"]).endswith("/txt2img")]
    assert warmup["timeout"] == (1.0, 0.5)  # the generation gets what is left of the deadline
    assert len(fake_a1111.requests_to("interrupt", "POST")) == 1


def test_is_engine_alive(tmp_path: Path) -> None:
    pid_file = tmp_path / "engine.pid"
    assert A1111Client("http://127.0.0.1:1").is_engine_alive() is True  # no pid file configured
    client = A1111Client("http://127.0.0.1:1", pid_file=pid_file)
    assert client.is_engine_alive() is False  # missing
    pid_file.write_text("not a pid")
    assert client.is_engine_alive() is False  # garbled
    write_pid_file(pid_file)
    assert client.is_engine_alive() is True  # this process
    write_pid_file(pid_file, dead_pid())
    assert client.is_engine_alive() is False


def test_zombie_engine_counts_as_dead(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 5
        while (
            time.monotonic() < deadline
            and stat.exists()
            and stat.read_text().rpartition(")")[2].split()[0] != "Z"
        ):
            time.sleep(0.02)
        if not stat.exists():
            pytest.skip("no /proc")
        client = A1111Client("http://127.0.0.1:1", pid_file=write_pid_file(tmp_path / "e.pid", proc.pid))
        assert client.is_engine_alive() is False
    finally:
        proc.wait()


# ------------------------------------------------------------------------------------------------
# Error mapping
# ------------------------------------------------------------------------------------------------


def test_txt2img_returns_a1111_response(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.png_size = 32
    out = client.txt2img({**PAYLOAD, "batch_size": 2, "n_iter": 2, "seed": 7}, timeout_s=5)
    assert len(out["images"]) == 4
    assert base64.b64decode(out["images"][0]).startswith(b"\x89PNG\r\n\x1a\n")
    info = json.loads(out["info"])
    assert info["all_seeds"] == [7, 8, 9, 10] and info["sd_model_name"] == "demo"
    assert out["parameters"]["prompt"] == "a cat"


def test_hang_past_deadline_is_timeout_and_interrupts(fake_a1111: FakeA1111) -> None:
    fake_a1111.set_fault("txt2img", hang=10)
    session = RecordingSession()
    client = A1111Client(fake_a1111.url, connect_timeout_s=1.0, session=session)
    with pytest.raises(JobTimeout) as info:
        client.txt2img(PAYLOAD, timeout_s=0.4)
    assert session.calls[0]["timeout"] == (1.0, 0.4)  # the job's deadline is the read timeout
    assert info.value.details["interrupted"] is True
    assert len(fake_a1111.requests_to("interrupt", "POST")) == 1
    assert len(fake_a1111.requests_to("txt2img")) == 1  # a read timeout is never retried


def test_500_is_engine_error_with_truncated_body(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault("txt2img", status=500, body=a1111_error_body("RuntimeError", "boom " * 200))
    with pytest.raises(EngineFailed) as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert type(info.value) is EngineFailed and info.value.refresh_worker is False
    assert "HTTP 500" in info.value.message and "RuntimeError: boom boom" in info.value.message
    assert len(info.value.message) < 420
    assert len(fake_a1111.requests_to("txt2img")) == 1  # never retried


def test_error_bodies_never_carry_base64(fake_a1111: FakeA1111, client: A1111Client) -> None:
    blob = base64.b64encode(os.urandom(600)).decode()
    fake_a1111.set_fault("txt2img", status=500, body=a1111_error_body("ValueError", f"bad image {blob}"))
    with pytest.raises(EngineFailed) as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert blob[:100] not in str(info.value) and "chars of base64" in info.value.message


def test_500_out_of_memory(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault("txt2img", status=500, body=OOM_BODY)
    with pytest.raises(OutOfMemory) as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert info.value.refresh_worker is True and "CUDA out of memory" in info.value.message


def test_422_names_the_field(fake_a1111: FakeA1111, client: A1111Client) -> None:
    with pytest.raises(InputInvalid) as info:
        client.txt2img({**PAYLOAD, "steps": "many"}, timeout_s=5)  # the fake validates like FastAPI
    assert "steps: value is not a valid integer" in info.value.message
    assert info.value.refresh_worker is False


def test_a1111_http_exception_shape(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault(
        "txt2img",
        status=422,
        body={"error": "HTTPException", "detail": "Script not found", "body": "", "errors": ""},
    )
    with pytest.raises(InputInvalid, match="Script not found"):
        client.txt2img(PAYLOAD, timeout_s=5)
    fake_a1111.set_fault("txt2img", status=404, body={"detail": "Not Found"})
    with pytest.raises(InputInvalid, match="HTTP 404: Not Found"):
        client.txt2img(PAYLOAD, timeout_s=5)
    fake_a1111.set_fault("txt2img", status=422, body=validation_body("width"))
    with pytest.raises(InputInvalid, match="width: value is not a valid integer"):
        client.txt2img(PAYLOAD, timeout_s=5)


def test_connection_dropped_mid_response(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault("txt2img", drop=True)
    with pytest.raises(EngineUnavailable) as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert info.value.refresh_worker is True and "dropped mid-response" in info.value.message
    assert len(fake_a1111.requests_to("txt2img")) == 1  # the generation ran: never resent


def test_connection_closed_without_response(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault("txt2img", close=True)
    with pytest.raises(EngineUnavailable) as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert info.value.refresh_worker is True
    assert len(fake_a1111.requests_to("txt2img")) == 1


def test_refused_connection() -> None:
    client = A1111Client(f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    with pytest.raises(EngineUnavailable, match="connection refused") as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert info.value.refresh_worker is True
    with pytest.raises(EngineUnavailable, match="connection refused"):
        client.catalog()


def test_txt2img_is_retried_when_never_sent(clock: FakeClock) -> None:
    port = free_port()  # nothing listens there: the first attempt is refused
    servers: list[FakeA1111] = []
    # the engine comes up during the backoff after the refusal (the fake listens as soon as it is built)
    clock.on_sleep.append(lambda _seconds: servers.append(FakeA1111(port=port).start()))
    try:
        client = A1111Client(f"http://127.0.0.1:{port}", connect_timeout_s=0.5, clock=clock)
        out = client.txt2img(PAYLOAD, timeout_s=5)
        assert out["images"]
        assert clock.sleeps == [0.2]  # one backoff, one retry
        assert len(servers[0].requests_to("txt2img")) == 1  # and the generation ran once
    finally:
        for server in servers:
            server.stop()


def test_other_statuses_and_bad_json_are_engine_errors(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault("txt2img", status=200, body="<html>not json</html>")
    with pytest.raises(EngineFailed, match="not JSON"):
        client.txt2img(PAYLOAD, timeout_s=5)
    fake_a1111.set_fault("txt2img", status=302, body={"detail": "moved"})
    with pytest.raises(EngineFailed, match="HTTP 302"):
        client.txt2img(PAYLOAD, timeout_s=5)


# ------------------------------------------------------------------------------------------------
# Retries of safe requests
# ------------------------------------------------------------------------------------------------


def test_get_retried_after_503_then_ok(fake_a1111: FakeA1111, client: A1111Client, clock: FakeClock) -> None:
    fake_a1111.fail_times("samplers", 2, status=503)
    samplers = client.call_listing("samplers")
    assert any(s["name"] == "Euler a" for s in samplers)
    assert len(fake_a1111.requests_to("samplers")) == 3
    assert clock.sleeps == [0.2, 0.4]  # exponential backoff between the attempts


def test_get_retried_after_closed_connection(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault("sd-vae", close=True, times=1)
    assert client.call_listing("sd-vae")
    assert len(fake_a1111.requests_to("sd-vae")) == 2


def test_get_retries_are_bounded(fake_a1111: FakeA1111, client: A1111Client, clock: FakeClock) -> None:
    fake_a1111.set_fault("samplers", status=502, body="Bad Gateway")
    with pytest.raises(EngineFailed, match="HTTP 502"):
        client.call_listing("samplers")
    assert len(fake_a1111.requests_to("samplers")) == 3
    assert clock.sleeps == [0.2, 0.4]


def test_retry_stops_at_once_when_engine_died(fake_a1111: FakeA1111, tmp_path: Path) -> None:
    fake_a1111.fail_times("samplers", 2, status=503)
    client = A1111Client(fake_a1111.url, pid_file=write_pid_file(tmp_path / "e.pid", dead_pid()))
    with pytest.raises(EngineUnavailable, match="exited"):
        client.call_listing("samplers")
    assert len(fake_a1111.requests_to("samplers")) == 1


def test_txt2img_500_is_not_retried_even_if_503(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.fail_times("txt2img", 1, status=503)
    with pytest.raises(EngineFailed, match="HTTP 503"):
        client.txt2img(PAYLOAD, timeout_s=5)
    assert len(fake_a1111.requests_to("txt2img")) == 1


# ------------------------------------------------------------------------------------------------
# Catalog, listings, progress, options
# ------------------------------------------------------------------------------------------------


def test_catalog_is_parsed_and_cached(fake_a1111: FakeA1111, client: A1111Client) -> None:
    catalog = client.catalog()
    assert isinstance(catalog, EngineCatalog)
    assert catalog.checkpoints[0].title == "demo.safetensors [0123456789]"
    assert catalog.checkpoints[2].hash is None and catalog.checkpoints[2].title == "unhashed.ckpt"
    assert {s.name for s in catalog.samplers} >= {"Euler a", "Euler", "DPM++ 2M"}
    assert next(s for s in catalog.samplers if s.name == "Euler a").aliases == (
        "k_euler_a",
        "k_euler_ancestral",
    )
    assert next(s for s in catalog.schedulers if s.name == "karras").label == "Karras"
    assert next(s for s in catalog.schedulers if s.name == "sgm_uniform").aliases == ("SGMUniform",)
    assert catalog.loras[0].name == "detail_tweaker" and catalog.loras[0].alias == "add_detail"
    assert catalog.embeddings == ("easynegative", "badhandv4")  # loaded only, not skipped
    assert "sdxl_vae.safetensors" in catalog.vaes
    assert "R-ESRGAN 4x+" in catalog.upscalers and "Latent (nearest-exact)" in catalog.upscalers
    assert catalog.current_checkpoint == "demo.safetensors [0123456789]"

    assert client.catalog() is catalog
    assert len(fake_a1111.requests_to("sd-models")) == 1
    fake_a1111.data.samplers.append({"name": "LCM", "aliases": ["k_lcm"], "options": {}})
    assert "LCM" in {s.name for s in client.catalog(refresh=True).samplers}
    assert len(fake_a1111.requests_to("sd-models")) == 2


def test_refresh_posts_and_invalidates_cache(fake_a1111: FakeA1111, client: A1111Client) -> None:
    client.catalog()
    fake_a1111.data.loras.append(
        {"name": "new_lora", "alias": "new_lora", "path": "/x.safetensors", "metadata": {}}
    )
    client.refresh("loras")
    assert len(fake_a1111.requests_to("refresh-loras", "POST")) == 1
    assert "new_lora" in {lo.name for lo in client.catalog().loras}
    with pytest.raises(InputInvalid):
        client.refresh("hypernetworks")  # type: ignore[arg-type]


def test_missing_optional_listing_is_empty(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.set_fault("schedulers", status=404, body={"detail": "Not Found"})  # A1111 < 1.9.1
    assert client.catalog().schedulers == ()


def test_call_listing_allowlist(fake_a1111: FakeA1111, client: A1111Client) -> None:
    for bad in ("cmd-flags", "txt2img", "server-kill", "../cmd-flags"):
        with pytest.raises(InputInvalid) as info:
            client.call_listing(bad)
        assert bad in info.value.message and "sd-models" in info.value.message
    assert fake_a1111.requests == []
    assert "cmd-flags" not in LISTING_ENDPOINTS
    assert client.call_listing("/sdapi/v1/upscalers")[0]["name"] == "None"
    assert client.call_listing("embeddings")["loaded"]
    assert client.call_listing("refresh-checkpoints") is None
    assert len(fake_a1111.requests_to("refresh-checkpoints", "POST")) == 1
    assert client.call_listing("progress")["progress"] == 0


def test_every_allowlisted_endpoint_is_served(fake_a1111: FakeA1111, client: A1111Client) -> None:
    for name in sorted(LISTING_ENDPOINTS):
        client.call_listing(name)
    assert all(r.path.startswith("/sdapi/v1/") for r in fake_a1111.requests)


def test_progress(fake_a1111: FakeA1111, client: A1111Client) -> None:
    assert client.progress() == GenerationProgress(
        progress=0.0, eta_relative=0.0, step=0, total=0, active=False
    )
    fake_a1111.progress_script = [
        {
            "progress": 0.0,
            "eta_relative": 3.0,
            "state": {"job_count": -1, "sampling_step": 0, "sampling_steps": 20},
        },
        {
            "progress": 0.25,
            "eta_relative": 1.5,
            "state": {"job_count": 0, "sampling_step": 5, "sampling_steps": 20},
        },
    ]
    assert client.progress() == GenerationProgress(
        progress=0.0, eta_relative=3.0, step=0, total=20, active=True
    )
    assert client.progress() == GenerationProgress(
        progress=0.25, eta_relative=1.5, step=5, total=20, active=True
    )
    assert all(r.query == {"skip_current_image": ["true"]} for r in fake_a1111.requests_to("progress"))


def test_progress_while_generating(fake_a1111: FakeA1111, client: A1111Client) -> None:
    fake_a1111.txt2img_delay = 5.0
    worker = threading.Thread(target=client.txt2img, args=(PAYLOAD,), kwargs={"timeout_s": 5})
    worker.start()
    try:
        deadline = time.monotonic() + 2
        while not client.progress().active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.progress().active
        assert client.interrupt() is True  # the fake ends the generation early
    finally:
        worker.join(timeout=5)
    assert not worker.is_alive()


def test_interrupt_failure_is_false_not_raised() -> None:
    client = A1111Client(f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    assert client.interrupt() is False


def test_set_options(fake_a1111: FakeA1111, client: A1111Client) -> None:
    assert client.catalog().current_checkpoint == "demo.safetensors [0123456789]"
    client.set_options({"sd_model_checkpoint": "base_xl"}, timeout_s=5)
    assert fake_a1111.requests_to("options", "POST")[0].body == {"sd_model_checkpoint": "base_xl"}
    assert client.catalog().current_checkpoint == "sdxl/base_xl.safetensors [fedcba9876]"
    with pytest.raises(EngineFailed, match="model 'nope' not found"):
        client.set_options({"sd_model_checkpoint": "nope"}, timeout_s=5)
    fake_a1111.set_fault("options", hang=10)
    with pytest.raises(JobTimeout):
        client.set_options({"sd_vae": "Automatic"}, timeout_s=0.3)


# ------------------------------------------------------------------------------------------------
# URL, auth, timeouts, secrets
# ------------------------------------------------------------------------------------------------


def test_trailing_slash_base_url(fake_a1111: FakeA1111) -> None:
    client = A1111Client(fake_a1111.url + "/")
    client.call_listing("sd-models")
    assert fake_a1111.requests[0].path == "/sdapi/v1/sd-models"


def test_from_settings_with_pydantic_url_and_auth(fake_a1111: FakeA1111) -> None:
    fake_a1111.auth = ("alice", "s3cret-pass")
    settings = WorkerSettings(a1111_url=fake_a1111.url, a1111_auth="alice:s3cret-pass")
    assert str(settings.a1111_url).endswith("/")
    client = A1111Client.from_settings(settings)
    client.call_listing("options")
    expected = "Basic " + base64.b64encode(b"alice:s3cret-pass").decode()
    assert fake_a1111.requests[-1].headers["Authorization"] == expected
    assert fake_a1111.requests[-1].path == "/sdapi/v1/options"


def test_wrong_credentials_never_leak(fake_a1111: FakeA1111, caplog: pytest.LogCaptureFixture) -> None:
    fake_a1111.auth = ("alice", "right-pass")
    client = A1111Client(fake_a1111.url, auth=("alice", "wrong-pass"))
    with caplog.at_level(logging.DEBUG), pytest.raises(EngineFailed) as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert "HTTP 401" in info.value.message and "WORKER_A1111_AUTH" in info.value.message
    assert "wrong-pass" not in str(info.value) and "wrong-pass" not in caplog.text
    userinfo = A1111Client(f"http://bob:hunter22@127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    with pytest.raises(EngineUnavailable) as info2:
        userinfo.call_listing("samplers")
    assert "hunter22" not in str(info2.value)


def test_every_request_has_a_timeout(fake_a1111: FakeA1111) -> None:
    session = RecordingSession()
    client = A1111Client(fake_a1111.url, connect_timeout_s=1.5, request_timeout_s=3.0, session=session)
    client.wait_until_ready(5.0)
    client.catalog()
    client.txt2img(PAYLOAD, timeout_s=7.0)
    client.progress()
    client.interrupt()
    client.refresh("vae")
    client.set_options({"sd_vae": "Automatic"}, timeout_s=9.0)
    assert len(session.calls) >= 14
    for call in session.calls:
        timeout = call.get("timeout")
        assert isinstance(timeout, tuple) and len(timeout) == 2 and all(t and t > 0 for t in timeout), call
        assert timeout[0] <= 1.5
    txt2img_timeouts = {c["timeout"] for c in session.calls if str(c["url"]).endswith("/txt2img")}
    assert (1.5, 7.0) in txt2img_timeouts


def test_logs_carry_no_base64(
    fake_a1111: FakeA1111, client: A1111Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="worker.a1111"):
        client.txt2img(PAYLOAD, timeout_s=5)
    assert "txt2img" in caplog.text
    assert not re.search(r"[A-Za-z0-9+/=]{200,}", caplog.text)


# ------------------------------------------------------------------------------------------------
# The fake as a separate process (what end-to-end tests start)
# ------------------------------------------------------------------------------------------------


def test_fake_runs_as_a_process_until_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "a1111.pid"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.fake_a1111",
            "--port",
            "0",
            "--png-size",
            "16",
            "--pid-file",
            str(pid_file),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().removeprefix("listening on ")
        assert url.startswith("http://127.0.0.1:")
        client = A1111Client(url, pid_file=pid_file)
        client.wait_until_ready(5.0)
        assert client.is_engine_alive()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert client.is_engine_alive() is False  # pid file removed on exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a1111_file_not_found_is_model_not_found_without_the_path(
    fake_a1111: FakeA1111, client: A1111Client
) -> None:
    errors = "[Errno 2] No such file or directory: '/runpod-volume/models/checkpoints/sub/gone.safetensors'"
    fake_a1111.set_fault("txt2img", status=500, body=a1111_error_body("FileNotFoundError", errors))
    with pytest.raises(ModelNotFound) as info:
        client.txt2img(PAYLOAD, timeout_s=5)
    assert "'gone.safetensors'" in info.value.message and "/runpod-volume" not in info.value.message
    assert not info.value.refresh_worker
