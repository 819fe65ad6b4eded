"""A job never changes later jobs, and the worker notices what A1111 did instead of what was asked.

Against the fake A1111, which reproduces the real one's recorded behaviour (tests/worker/test_fake_transcripts.py):
an override whose key is not in A1111's opts.data is never restored (a fresh data dir, or any A1111 whose
config.json lacks the key), ``override_settings_restore_afterwards: false`` keeps every override, and an
interrupt from outside answers 200 with a cut-short image.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from typing import Any

import pytest
import requests

from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.settings import WorkerSettings


def make_runner(fake: FakeA1111, **deployment: Any) -> JobRunner:
    settings = WorkerSettings.model_validate({"a1111_url": fake.url, "job_timeout_s": 20, **deployment})
    return JobRunner(settings, A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5))


def info_of(output: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in output, output
    info: dict[str, Any] = json.loads(output["info"])
    return info


PLAIN = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 3}


def test_clip_skip_and_vae_of_one_job_do_not_leak_into_the_next(fake_a1111: FakeA1111) -> None:
    """Issue 8 #2: on an A1111 whose config.json lacks the keys, they used to stick with no warning."""
    runner = make_runner(fake_a1111)
    first = info_of(runner.run({"id": "1", "input": {**PLAIN, "clip_skip": 2, "vae": "sdxl_vae"}}))
    assert first["clip_skip"] == 2 and first["sd_vae_name"] == "sdxl_vae.safetensors"

    second = runner.run({"id": "2", "input": PLAIN})
    info = info_of(second)
    assert info["clip_skip"] == 1
    assert info["sd_vae_name"] is None
    assert "Clip skip" not in info["infotexts"][0] and "VAE" not in info["infotexts"][0]
    assert second["models"]["vae"] is None
    sent = fake_a1111.requests_to("txt2img", "POST")[-1].body
    assert sent["override_settings"]["CLIP_stop_at_last_layers"] == 1
    assert sent["override_settings"]["sd_vae"] == "Automatic"
    assert sent["override_settings"]["sd_model_checkpoint"] == "demo.safetensors [0123456789]"
    assert sent["override_settings_restore_afterwards"] is True


def test_restore_afterwards_false_cannot_change_later_jobs(fake_a1111: FakeA1111) -> None:
    """Issue 9 #3: even with a complete config.json, restore=false made clip skip 3 stick for every job."""
    fake_a1111.data.with_complete_config()
    runner = make_runner(fake_a1111)
    body = {
        **PLAIN,
        "override_settings": {"CLIP_stop_at_last_layers": 3, "eta_noise_seed_delta": 31337},
        "override_settings_restore_afterwards": False,
        "sampler_name": "Euler a",
    }
    out = runner.run({"id": "1", "input": body})
    assert info_of(out)["clip_skip"] == 3
    assert any("override_settings_restore_afterwards=false was ignored" in w for w in out["warnings"])

    later = info_of(runner.run({"id": "2", "input": {**PLAIN, "sampler": "Euler a"}}))
    assert later["clip_skip"] == 1
    assert "ENSD" not in later["infotexts"][0]  # any setting a job overrode is sent back too
    assert fake_a1111.data.options["CLIP_stop_at_last_layers"] == 1


def test_a_leaked_engine_setting_is_caught_not_returned(fake_a1111: FakeA1111) -> None:
    """If A1111 ignores what was sent (here: it keeps clip skip 2), the job fails naming the field."""
    runner = make_runner(fake_a1111)
    runner.engine.catalog()

    class StuckClipSkip(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            if key != "CLIP_stop_at_last_layers":
                super().__setitem__(key, value)

    fake_a1111.data.options = StuckClipSkip({**fake_a1111.data.options, "CLIP_stop_at_last_layers": 2})
    out = runner.run({"id": "1", "input": PLAIN})
    assert out["error"] == (
        "engine_error: the engine did not generate what the job asked for: clip skip 2 instead of 1"
    )
    assert "refresh_worker" not in out


def test_a_lora_the_engine_skips_is_an_engine_error(fake_a1111: FakeA1111) -> None:
    runner = make_runner(fake_a1111)
    runner.engine.catalog()  # pre-flight sees the LoRA...
    fake_a1111.data.loras = [lo for lo in fake_a1111.data.loras if lo["name"] != "pixel_art"]  # ...A1111 not
    out = runner.run({"id": "1", "input": {**PLAIN, "loras": [{"name": "pixel_art", "weight": 0.7}]}})
    assert out["error"].startswith("engine_error: ")
    assert "LoRA 'pixel_art' was not applied" in out["error"]


#: deployments where someone other than the worker can interrupt A1111: the worker asks /progress after a job
SHARED_ENGINES = [
    {},  # WORKER_ENGINE=auto: the worker does not know who else calls the engine
    {"engine": "a1111", "expose_engine": True},  # WORKER_EXPOSE_ENGINE=1
    {"engine": "external"},
]


def _interrupted_while_running(fake: FakeA1111, runner: JobRunner, interrupt: Any) -> dict[str, Any]:
    """The job's output when ``interrupt()`` is called while A1111 generates it."""
    fake.txt2img_delay = 10
    result: dict[str, Any] = {}
    job = threading.Thread(target=lambda: result.update(out=runner.run({"id": "1", "input": PLAIN})))
    job.start()
    deadline = time.monotonic() + 10
    while not fake._running and time.monotonic() < deadline:
        time.sleep(0.02)
    interrupt()
    job.join(15)
    return result


@pytest.mark.parametrize("deployment", SHARED_ENGINES)
def test_an_interrupt_from_outside_cancels_the_job(fake_a1111: FakeA1111, deployment: dict[str, Any]) -> None:
    """Issue 9 #4: A1111 answers 200 with a cut-short image; the job used to come back COMPLETED."""
    runner = make_runner(fake_a1111, **deployment)
    outside = functools.partial(requests.post, f"{fake_a1111.url}/sdapi/v1/interrupt", timeout=5)
    result = _interrupted_while_running(fake_a1111, runner, outside)
    assert result["out"]["error"].startswith("cancelled: the engine's generation was interrupted")
    assert "images" not in result["out"]
    # the next job runs normally: A1111 clears the flag when a job begins
    fake_a1111.txt2img_delay = 0
    assert "error" not in runner.run({"id": "2", "input": PLAIN})
    assert fake_a1111.requests_to("progress")  # asked after each job


def test_a_private_engine_is_not_asked_about_interrupts(fake_a1111: FakeA1111) -> None:
    """Issue 17: start.sh's own A1111 on the loopback can be interrupted by the worker alone: no /progress."""
    runner = make_runner(fake_a1111, engine="a1111")
    assert "error" not in runner.run({"id": "1", "input": PLAIN})
    assert "error" not in runner.run({"id": "2", "input": PLAIN})
    assert fake_a1111.requests_to("progress") == []
    shared = make_runner(fake_a1111, engine="a1111", expose_engine=True)
    assert "error" not in shared.run({"id": "3", "input": PLAIN})
    assert len(fake_a1111.requests_to("progress")) == 1


def test_an_interrupt_the_worker_sent_during_a_job_on_a_private_engine_cancels_it(
    fake_a1111: FakeA1111,
) -> None:
    """E.g. another job's timeout landing on this one: the worker knows it interrupted, so it asks."""
    runner = make_runner(fake_a1111, engine="a1111")
    result = _interrupted_while_running(fake_a1111, runner, runner.engine.interrupt)
    assert result["out"]["error"].startswith("cancelled: the engine's generation was interrupted")
    assert len(fake_a1111.requests_to("progress")) == 1
