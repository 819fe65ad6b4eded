"""Record the golden A1111 transcripts the fake A1111 (tests/support/fake_a1111.py) is checked against.

Launches the real A1111 v1.10.1 through ``start.sh`` (``WORKER_ENGINE=a1111``, a fresh data dir, the tiny
models of ``scripts/a1111_test_models.py``, ``--api-auth``) and records, in order, what the worker relies
on: every listing, ``/progress`` idle, during a job and after an interrupt, txt2img ``info`` for a matrix
of features and quirks (silent sampler fallback, unknown LoRA ignored, settings that stick), and the error
bodies of each failure; then, on a second fresh A1111, the image endpoints
(``scripts/record_a1111_images.py``). Machine paths are replaced by ``$MODELS_DIR``, ``$DATA_DIR`` and
``$A1111_DIR``; images are kept as their size only. Usage (docs/testing.md)::

    A1111_DIR=... [A1111_PYTHON=...] .venv/bin/python scripts/record_a1111_transcripts.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import record_a1111_images  # noqa: E402
from tests.support.input_images import sizes_of  # noqa: E402
from tests.support.real_a1111 import a1111_dir, launched, start_env, volume_with_tiny_models  # noqa: E402
from worker.a1111.endpoints import LISTING_ENDPOINTS  # noqa: E402

log = logging.getLogger("record_a1111_transcripts")

AUTH = ("recorder", "recorder-pass")
#: Every read-only listing the worker may serve (its envelope allowlist), minus refreshes and /progress.
LISTINGS = tuple(sorted(e for e in LISTING_ENDPOINTS if not e.startswith("refresh-") and e != "progress"))
BASE: dict[str, Any] = {
    "prompt": "a lighthouse",
    "steps": 2,
    "width": 64,
    "height": 64,
    "seed": 11,
    "subseed": 5,
}

#: (name, body changes): sent in this order to one fresh A1111, so the settings that stick show up.
TXT2IMG: list[tuple[str, dict[str, Any]]] = [
    ("minimal", {}),
    ("sampler_and_scheduler", {"sampler_name": "Euler a", "scheduler": "Karras"}),
    ("combined_sampler_name", {"sampler_name": "DPM++ 2M Karras"}),
    ("automatic_means_the_sampler_default", {"sampler_name": "DPM++ 2M", "scheduler": "Automatic"}),
    ("scheduler_by_name", {"sampler_name": "Euler", "scheduler": "exponential"}),
    ("legacy_sampler_index", {"sampler_index": "Heun"}),
    ("unknown_sampler_falls_back_silently", {"sampler_name": "Euler ancestral"}),
    ("sampler_alias_falls_back_silently", {"sampler_name": "k_euler_a"}),
    ("unknown_scheduler_becomes_automatic", {"sampler_name": "Euler", "scheduler": "Karras2"}),
    ("lora_by_name", {"prompt": "a lighthouse <lora:tiny_lora:0.8>"}),
    ("lora_by_alias", {"prompt": "a lighthouse <lora:tiny_lora_v1:1>"}),
    ("unknown_lora_ignored_silently", {"prompt": "a lighthouse <lora:tiny_lora_missing:1>"}),
    ("lora_in_negative_prompt_not_applied", {"negative_prompt": "<lora:tiny_lora:1>"}),
    ("embedding", {"prompt": "a lighthouse tiny_emb"}),
    ("repeated_prompt_drops_ti_hashes", {"prompt": "a lighthouse tiny_emb"}),
    ("batch_and_iterations", {"batch_size": 2, "n_iter": 2}),
    ("variation_seed", {"subseed_strength": 0.5, "batch_size": 2}),
    ("cfg_and_negative_prompt", {"cfg_scale": 4.5, "negative_prompt": "blurry"}),
    (
        "hires_latent",
        {"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5, "hr_second_pass_steps": 1},
    ),
    (
        "hires_upscaler_sampler_resize",
        {
            "enable_hr": True,
            "hr_resize_x": 96,
            "hr_resize_y": 96,
            "hr_upscaler": "Lanczos",
            "hr_sampler_name": "Euler",
            "hr_scheduler": "Karras",
            "denoising_strength": 0.4,
        },
    ),
    ("checkpoint_override", {"override_settings": {"sd_model_checkpoint": "tiny_b"}}),
    ("after_checkpoint_override", {}),
    (
        "unknown_checkpoint_override_ignored_silently",
        {"override_settings": {"sd_model_checkpoint": "tiny_zzz"}},
    ),
    # Issue 8 #2: keys missing from config.json (a fresh data dir) are never restored.
    ("clip_skip_override", {"override_settings": {"CLIP_stop_at_last_layers": 2}}),
    ("after_clip_skip_override_it_sticks", {}),
    ("vae_override", {"override_settings": {"sd_vae": "tiny_vae.safetensors"}}),
    ("after_vae_override_it_sticks", {}),
    ("explicit_defaults", {"override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}}),
    ("after_explicit_defaults_the_leak_is_back", {}),
    ("vae_none", {"override_settings": {"sd_vae": "None", "CLIP_stop_at_last_layers": 1}}),
    (
        "unknown_vae_becomes_none",
        {"override_settings": {"sd_vae": "nope.safetensors", "CLIP_stop_at_last_layers": 1}},
    ),
    # Issue 9 #3: restore=false keeps every override for later requests.
    (
        "restore_false",
        {
            "override_settings": {"CLIP_stop_at_last_layers": 3, "sd_vae": "Automatic"},
            "override_settings_restore_afterwards": False,
        },
    ),
    ("after_restore_false_it_sticks", {}),
    (
        "other_setting_override",
        {"sampler_name": "Euler a", "override_settings": {"eta_noise_seed_delta": 31337}},
    ),
    ("after_other_setting_it_sticks", {"sampler_name": "Euler a"}),
    (
        "worker_style_payload",
        {
            "prompt": "a lighthouse <lora:tiny_lora:0.6>",
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            "cfg_scale": 6.5,
            "override_settings": {
                "sd_model_checkpoint": "tiny_a.safetensors",
                "CLIP_stop_at_last_layers": 2,
                "sd_vae": "tiny_vae.safetensors",
                "eta_noise_seed_delta": 0,
            },
            "override_settings_restore_afterwards": True,
            "save_images": False,
            "send_images": True,
        },
    ),
]

#: (name, method, endpoint, body, authenticated): the failures the worker maps to its error codes.
ERRORS: list[tuple[str, str, str, Any, bool]] = [
    ("bad_field_type", "POST", "txt2img", {**BASE, "steps": "many"}, True),
    ("hires_without_denoising_strength", "POST", "txt2img", {**BASE, "enable_hr": True}, True),
    (
        "unknown_hr_upscaler",
        "POST",
        "txt2img",
        {**BASE, "enable_hr": True, "denoising_strength": 0.5, "hr_upscaler": "4x-Ultra"},
        True,
    ),
    (
        "unknown_hr_sampler",
        "POST",
        "txt2img",
        {**BASE, "enable_hr": True, "denoising_strength": 0.5, "hr_sampler_name": "Euler ancestral"},
        True,
    ),
    ("unknown_override_key", "POST", "txt2img", {**BASE, "override_settings": {"no_such_setting": 1}}, True),
    ("unknown_refiner_checkpoint", "POST", "txt2img", {**BASE, "refiner_checkpoint": "nope"}, True),
    ("unknown_script", "POST", "txt2img", {**BASE, "script_name": "nope"}, True),
    (
        "unknown_alwayson_script",
        "POST",
        "txt2img",
        {**BASE, "alwayson_scripts": {"nope": {"args": []}}},
        True,
    ),
    ("options_unknown_checkpoint", "POST", "options", {"sd_model_checkpoint": "nope"}, True),
    ("unknown_endpoint", "GET", "nope", None, True),
    ("wrong_method", "POST", "sd-models", None, True),
    ("no_credentials", "GET", "sd-models", None, False),
    ("loras_need_no_credentials", "GET", "loras", None, False),
    ("refresh_checkpoints", "POST", "refresh-checkpoints", None, True),
    ("refresh_loras", "POST", "refresh-loras", None, True),
]


class Scrubber:
    """Replaces this machine's folders with placeholders, everywhere in a JSON value."""

    def __init__(self, folders: dict[str, Path]) -> None:
        # Longest first, so a folder inside another is replaced by its own name.
        self._pairs = sorted(((str(path), name) for name, path in folders.items()), key=lambda p: -len(p[0]))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            for path, name in self._pairs:
                value = value.replace(path, name)
            return value
        if isinstance(value, list):
            return [self(item) for item in value]
        if isinstance(value, dict):
            return {key: self(item) for key, item in value.items()}
        return value


def model_hashes(models: Path) -> dict[str, dict[str, str]]:
    """The hashes A1111 writes into infotexts, from the files (sha256 prefixes; addnet hash for LoRAs)."""

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def addnet(path: Path) -> str:  # sha256 of the tensor data after the safetensors header
        raw = path.read_bytes()
        return hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little") :]).hexdigest()

    return {
        "checkpoints": {p.name: sha256(p) for p in sorted((models / "checkpoints").glob("*.safetensors"))},
        "loras": {p.stem: addnet(p)[:12] for p in sorted((models / "loras").glob("*.safetensors"))},
        "embeddings": {p.stem: sha256(p)[:12] for p in sorted((models / "embeddings").glob("*.safetensors"))},
        "vae": {p.name: sha256(p)[:10] for p in sorted((models / "vae").glob("*.safetensors"))},
    }


class Recorder:
    def __init__(self, url: str, scrub: Scrubber) -> None:
        self.api = url + "/sdapi/v1/"
        self.scrub = scrub
        self.exchanges: list[dict[str, Any]] = []

    def call(
        self, name: str, method: str, endpoint: str, body: Any = None, authenticated: bool = True
    ) -> Any:
        response = requests.request(
            method, self.api + endpoint, json=body, auth=AUTH if authenticated else None, timeout=600
        )
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        recorded: Any = payload
        if endpoint in ("txt2img", "img2img") and response.status_code == 200:
            recorded = {
                "images": sizes_of(payload["images"]),
                "parameters": payload["parameters"],
                "info": json.loads(payload["info"]),
            }
        elif endpoint.startswith("extra-") and response.status_code == 200:
            images = payload["images"] if "images" in payload else [payload["image"]]
            recorded = {"images": sizes_of(images), "html_info": payload["html_info"]}
        self.exchanges.append(
            {
                "name": name,
                "method": method,
                "endpoint": endpoint,
                "authenticated": authenticated,
                "body": body,
                "status": response.status_code,
                "response": self.scrub(recorded),
            }
        )
        log.info("%-45s %s %s -> %d", name, method, endpoint, response.status_code)
        return payload


def record_progress(recorder: Recorder) -> dict[str, Any]:
    """``/progress`` idle, while a job samples, and after that job was interrupted."""

    def progress() -> dict[str, Any]:
        got = requests.get(
            recorder.api + "progress", params={"skip_current_image": "true"}, auth=AUTH, timeout=30
        )
        return dict(got.json())

    idle = progress()
    body = {**BASE, "steps": 60, "width": 128, "height": 128, "sampler_name": "Euler"}
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(response=recorder.call("interrupted_job", "POST", "txt2img", body))
    )
    worker.start()
    running: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = progress()
        if running["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.1)
    requests.post(recorder.api + "interrupt", auth=AUTH, timeout=30)
    worker.join(300)
    return {"idle": idle, "running": running, "after_interrupt": progress()}


def recording_setup(doc: str | None, argv: list[str] | None) -> tuple[Path, Path]:
    """The command line of a recorder (``--out``) and the A1111 install it records; logging on."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "a1111")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    install = a1111_dir()
    if install is None:
        parser.error("set A1111_DIR to an A1111 v1.10.1 install (scripts/setup_a1111.sh)")
    return args.out, install


def fresh_engine(install: Path, tmp: Path, **extra: str) -> tuple[Path, dict[str, str], Scrubber]:
    """A volume of tiny models under ``tmp``, start.sh's environment for it, and the scrubber of its paths."""
    models = volume_with_tiny_models(install, tmp / "models")
    env = start_env(install, tmp, models, **extra)
    return (
        models,
        env,
        Scrubber({"$MODELS_DIR": models, "$DATA_DIR": tmp / "a1111-data", "$A1111_DIR": install}),
    )


def main(argv: list[str] | None = None) -> int:
    out, install = recording_setup(__doc__, argv)
    with tempfile.TemporaryDirectory(prefix="a1111-record-") as tmp_name:
        tmp = Path(tmp_name)
        # start.sh alone sets --api-auth (docs/deploying.md): through the exposed-engine settings
        models, env, scrub = fresh_engine(
            install, tmp, WORKER_EXPOSE_ENGINE="1", A1111_API_AUTH=":".join(AUTH)
        )
        with launched(env, tmp / "start.log") as started:
            recorder = Recorder(started.url, scrub)
            listings = {name: scrub(recorder.call(name, "GET", name)) for name in LISTINGS}
            recorder.exchanges.clear()  # listings are kept on their own, below
            for name, changes in TXT2IMG:
                recorder.call(name, "POST", "txt2img", {**BASE, **changes})
            for name, method, endpoint, body, authenticated in ERRORS:
                recorder.call(name, method, endpoint, body, authenticated)
            progress = scrub(record_progress(recorder))
        version = recorder.exchanges[0]["response"]["info"]["version"]
        meta = {
            "recorded_with": f"A1111 {version} via start.sh (WORKER_ENGINE=a1111), CPU, fresh data dir",
            "script": "scripts/record_a1111_transcripts.py",
            "auth": ":".join(AUTH),
            "hashes": model_hashes(models),
        }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("meta", meta),
        ("listings", listings),
        ("exchanges", recorder.exchanges),
        ("progress", progress),
    ):
        (out / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    log.info("transcripts written to %s", out)
    return record_a1111_images.main(["--out", str(out)])  # on a fresh A1111 of its own


if __name__ == "__main__":
    sys.exit(main())
