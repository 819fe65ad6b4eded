"""A fault-injecting fake A1111: a real loopback HTTP server speaking A1111's ``/sdapi/v1`` shapes.

It is for fault injection (hangs, 500/422 bodies, dropped or closed connections, transient failures) and
for asserting exactly what a client sent; the real generation path is tested against the embedded engine.

In tests, use the ``fake_a1111`` fixture::

    def test_oom(fake_a1111):
        fake_a1111.set_fault("txt2img", status=500, body=OOM_BODY)
        ...
        assert len(fake_a1111.requests_to("txt2img")) == 1

As a process (end-to-end tests, manual runs)::

    python -m tests.support.fake_a1111 --port 0 --png-size 64 --pid-file /tmp/a1111.pid

prints ``listening on http://127.0.0.1:PORT`` and serves until SIGTERM. A control API lets another
process drive it: ``POST /__fake__/faults`` ``{"txt2img": {"status": 500, "body": {...}}}``,
``POST /__fake__/reset``, ``GET /__fake__/requests``, ``POST /__fake__/data`` (``{"checkpoints": [...]}``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.a1111_behaviour import A1111Failure, exception_body, generate, transcript
from tests.support.a1111_image_behaviour import image_tool

log = logging.getLogger(__name__)

API = "/sdapi/v1/"
CONTROL = "/__fake__/"

#: A1111's 500 body for a CUDA OOM (api_middleware shape).
OOM_BODY = {
    "error": "OutOfMemoryError",
    "detail": "",
    "body": "",
    "errors": "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity)",
}


#: FastAPI's 422 body for a bad field.
def validation_body(
    field_name: str, msg: str = "value is not a valid integer", kind: str = "type_error.integer"
) -> dict[str, Any]:
    return {"detail": [{"loc": ["body", field_name], "msg": msg, "type": kind}]}


a1111_error_body = exception_body


# --------------------------------------------------------------------------------------------------
# Data the fake serves (mutable: tests change it)
# --------------------------------------------------------------------------------------------------


def _checkpoint(name: str, sha256: str | None, root: str = "/models/Stable-diffusion") -> dict[str, Any]:
    stem = name.rsplit(".", 1)[0]
    return {
        "title": f"{name} [{sha256[:10]}]" if sha256 else name,
        "model_name": stem.replace("/", "_"),
        "hash": sha256[:10] if sha256 else None,
        "sha256": sha256,
        "filename": f"{root}/{name}",
        "config": None,
    }


def _recorded(name: str) -> Any:
    """A recorded A1111 listing (tests/fixtures/a1111/listings.json), a fresh copy."""
    return copy.deepcopy(transcript("listings")[name])


def _made_up_hash(name: str, length: int) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:length]


def _default_options() -> dict[str, Any]:
    """A1111's recorded ``/options`` (a fresh data dir), on the default data's checkpoint."""
    options = _recorded("options")
    options.update(sd_model_checkpoint="demo.safetensors [0123456789]", sd_vae="Automatic")
    options.update(CLIP_stop_at_last_layers=1, eta_noise_seed_delta=0)
    return options


@dataclass
class FakeData:
    """Everything the listing endpoints return, in A1111's shapes.

    A1111's own lists (samplers, schedulers, upscalers, options...) are the recorded ones; the model lists
    are made-up test models unless built with ``FakeData.recorded()`` (the recorder's tiny models).
    ``hashes`` holds what A1111 writes into infotexts (LoRA addnet hashes, TI and VAE hashes, checkpoint
    sha256 known once loaded); ``opts_data_keys`` are the option keys A1111 holds in ``opts.data`` (its
    ``config.json`` plus every key set since): only those are restored after ``override_settings``, and a
    fresh data dir holds just the checkpoint.
    """

    checkpoints: list[dict[str, Any]] = field(
        default_factory=lambda: [
            _checkpoint("demo.safetensors", "0123456789" + "ab" * 27),
            _checkpoint("sdxl/base_xl.safetensors", "fedcba9876" + "cd" * 27),
            _checkpoint("unhashed.ckpt", None),
        ]
    )
    samplers: list[dict[str, Any]] = field(default_factory=lambda: _recorded("samplers"))
    schedulers: list[dict[str, Any]] = field(default_factory=lambda: _recorded("schedulers"))
    loras: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {
                "name": "detail_tweaker",
                "alias": "add_detail",
                "path": "/models/Lora/detail_tweaker.safetensors",
                "metadata": {},
            },
            {
                "name": "pixel_art",
                "alias": "pixel_art",
                "path": "/models/Lora/pixel_art.safetensors",
                "metadata": {},
            },
        ]
    )
    embeddings: dict[str, Any] = field(
        default_factory=lambda: {
            "loaded": {
                "easynegative": {
                    "step": None,
                    "sd_checkpoint": None,
                    "sd_checkpoint_name": None,
                    "shape": 768,
                    "vectors": 8,
                },
                "badhandv4": {
                    "step": None,
                    "sd_checkpoint": None,
                    "sd_checkpoint_name": None,
                    "shape": 768,
                    "vectors": 6,
                },
            },
            "skipped": {
                "sdxl_only": {
                    "step": None,
                    "sd_checkpoint": None,
                    "sd_checkpoint_name": None,
                    "shape": 1280,
                    "vectors": 4,
                }
            },
        }
    )
    vaes: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {
                "model_name": "vae-ft-mse-840000-ema-pruned.safetensors",
                "filename": "/models/VAE/vae-ft-mse-840000-ema-pruned.safetensors",
            },
            {"model_name": "sdxl_vae.safetensors", "filename": "/models/VAE/sdxl_vae.safetensors"},
        ]
    )
    upscalers: list[dict[str, Any]] = field(default_factory=lambda: _recorded("upscalers"))
    latent_upscale_modes: list[dict[str, Any]] = field(
        default_factory=lambda: _recorded("latent-upscale-modes")
    )
    hypernetworks: list[dict[str, Any]] = field(default_factory=lambda: _recorded("hypernetworks"))
    face_restorers: list[dict[str, Any]] = field(default_factory=lambda: _recorded("face-restorers"))
    realesrgan_models: list[dict[str, Any]] = field(default_factory=lambda: _recorded("realesrgan-models"))
    prompt_styles: list[dict[str, Any]] = field(default_factory=lambda: _recorded("prompt-styles"))
    scripts: dict[str, Any] = field(default_factory=lambda: _recorded("scripts"))
    memory: dict[str, Any] = field(default_factory=lambda: _recorded("memory"))
    options: dict[str, Any] = field(default_factory=_default_options)
    hashes: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "checkpoints": {},
            "loras": {name: _made_up_hash(name, 12) for name in ("detail_tweaker", "pixel_art")},
            "embeddings": {name: _made_up_hash(name, 12) for name in ("easynegative", "badhandv4")},
            "vae": {
                name: _made_up_hash(name, 10)
                for name in ("vae-ft-mse-840000-ema-pruned.safetensors", "sdxl_vae.safetensors")
            },
        }
    )
    opts_data_keys: set[str] = field(default_factory=lambda: {"sd_model_checkpoint"})
    #: interrogate model -> the caption its weights give (tests/fixtures/a1111/tools.json); absent: no weights
    interrogation_captions: dict[str, str] = field(default_factory=dict)
    #: routes of installed extensions, path -> JSON (``/controlnet/model_list``...; tests/support/fake_extensions.py)
    extension_routes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def recorded(cls) -> FakeData:
        """Exactly what the recorded A1111 served: its tiny models, options and hashes."""
        meta = transcript("meta")
        return cls(
            checkpoints=_recorded("sd-models"),
            loras=_recorded("loras"),
            embeddings=_recorded("embeddings"),
            vaes=_recorded("sd-vae"),
            options=_recorded("options"),
            hashes=copy.deepcopy(meta["hashes"]),
        )

    def with_complete_config(self) -> FakeData:
        """As with the image's complete ``config.json``: every option is restored after a job."""
        self.opts_data_keys = set(self.options)
        return self

    def checkpoint_for(self, name: str | None) -> dict[str, Any] | None:
        """The checkpoint ``name`` designates, using A1111's aliases (title, name, stem, hashes)."""
        if not name:
            return None
        for ckpt in self.checkpoints:
            rel = ckpt["title"].split(" [", 1)[0]
            stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            aliases = {ckpt["title"], ckpt["model_name"], rel, stem}
            if ckpt.get("hash"):
                aliases |= {ckpt["hash"], f"{rel} [{ckpt['hash']}]"}
            if ckpt.get("sha256"):
                short = ckpt["sha256"][:10]
                aliases |= {short, ckpt["sha256"], f"{rel} [{short}]", f"{stem} [{short}]"}
            if name in aliases:
                return ckpt
        return None


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What goes wrong on one path.

    ``hang`` seconds are slept first; then ``close`` (no response at all), ``drop`` (headers and part of
    the body, then the socket is closed) or ``status`` + ``body`` replace the normal answer. ``times``
    limits the fault to the next n requests (``fail_times``), after which the path behaves normally.
    """

    status: int | None = None
    body: Any = None
    hang: float = 0.0
    drop: bool = False
    close: bool = False
    times: int | None = None


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    raw_body: bytes
    at: float


def _normalise_path(path: str) -> str:
    """``"txt2img"``, ``"/sdapi/v1/txt2img"`` and ``"sdapi/v1/txt2img"`` name the same path."""
    path = path.split("?", 1)[0]
    if path.startswith("/"):
        return path
    if path.startswith(API.lstrip("/")):
        return "/" + path
    return API + path


_PNG_CACHE: dict[tuple[int, int], str] = {}
_PNG_LOCK = threading.Lock()


def png_base64(width: int, height: int) -> str:
    """Base64 of a real PNG of the given size (built with Pillow once per size).

    The pixels are seeded noise, so the PNG is as large as a real generation's (a flat colour would compress
    to a few hundred bytes and hide the cost of moving images through the worker).
    """
    key = (width, height)
    with _PNG_LOCK:
        if key not in _PNG_CACHE:
            from PIL import Image

            noise = random.Random(width * 10_000 + height).randbytes(width * height * 3)
            image = Image.frombytes("RGB", key, noise)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            _PNG_CACHE[key] = base64.b64encode(buf.getvalue()).decode("ascii")
        return _PNG_CACHE[key]


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------

_INT_FIELDS = (
    "steps",
    "width",
    "height",
    "batch_size",
    "n_iter",
    "seed",
    "subseed",
    "clip_skip",
    "hr_second_pass_steps",
)
_FLOAT_FIELDS = ("cfg_scale", "denoising_strength", "hr_scale", "subseed_strength", "eta")


class FakeA1111:
    """The fake server; start with ``start()`` (or use the fixture), stop with ``stop()``.

    Attributes:
        url: ``http://127.0.0.1:PORT`` (no trailing slash).
        data: the listings it serves (`FakeData`, mutable).
        requests: every request received, in order (`RecordedRequest`).
        faults: path → `Fault`, set with ``set_fault``.
        progress_script: `/progress` answers served in order (the last one repeats); empty = derived from
            whether a txt2img is running.
        auth: ``(user, password)`` to require HTTP Basic like ``--api-auth`` (not on the Lora routes).
        png_size: size of the returned images; ``None`` = the request's width x height.
        txt2img_delay: seconds each txt2img takes (so progress can be polled meanwhile).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, png_size: int | tuple[int, int] | None = 512
    ) -> None:
        self.data = FakeData()
        self.requests: list[RecordedRequest] = []
        self.faults: dict[str, Fault] = {}
        self.progress_script: list[dict[str, Any]] = []
        self.auth: tuple[str, str] | None = None
        self.png_size = png_size
        self.txt2img_delay = 0.0
        self.interrupted = threading.Event()
        self._lock = threading.Lock()
        self._release = threading.Event()  # set on stop: ends every hang at once
        self._running = 0
        self._jobs_done = 0
        self._last_steps = 0
        self._job_timestamp = "0"
        self._cond_cache: list[Any] = []  # A1111's one-entry conditioning cache
        self._httpd = _Server((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeA1111:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeA1111:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Back to a fresh server: default data, no faults, no recorded requests."""
        with self._lock:
            self.data = FakeData()
            self.requests.clear()
            self.faults.clear()
            self.progress_script.clear()
            self.auth = None
            self.txt2img_delay = 0.0
            self.interrupted.clear()
            self._jobs_done = 0
            self._cond_cache.clear()

    # -- faults ------------------------------------------------------------------------------------

    def set_fault(
        self,
        path: str,
        *,
        status: int | None = None,
        body: Any = None,
        hang: float = 0.0,
        drop: bool = False,
        close: bool = False,
        times: int | None = None,
    ) -> Fault:
        """Inject a fault on ``path`` (``"txt2img"`` or ``"/sdapi/v1/txt2img"``); see `Fault`."""
        fault = Fault(status=status, body=body, hang=hang, drop=drop, close=close, times=times)
        with self._lock:
            self.faults[_normalise_path(path)] = fault
        return fault

    def fail_times(self, path: str, n: int, *, status: int = 503, body: Any = None) -> Fault:
        """Answer the next ``n`` requests to ``path`` with ``status``, then behave normally."""
        return self.set_fault(
            path, status=status, body=body if body is not None else {"detail": "busy"}, times=n
        )

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            fault = self.faults.get(path)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[path]
            return fault

    # -- recorded requests -------------------------------------------------------------------------

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """The recorded requests to ``path`` (optionally only one method)."""
        wanted = _normalise_path(path)
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path == wanted and (method is None or r.method == method.upper())
            ]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- endpoint behaviour ------------------------------------------------------------------------

    def _progress(self) -> dict[str, Any]:
        """``/progress`` as recorded: the interrupted flag outlives the job until the next one begins."""
        with self._lock:
            if self.progress_script:
                return (
                    self.progress_script.pop(0) if len(self.progress_script) > 1 else self.progress_script[0]
                )
            running = self._running > 0
            state = {
                "skipped": False,
                "interrupted": self.interrupted.is_set(),
                "stopping_generation": False,
                "job": "scripts_txt2img" if running else "",
                "job_count": 1 if running else 0,
                "job_timestamp": self._job_timestamp,
                "job_no": 0 if running else min(self._jobs_done, 1),
                "sampling_step": 10 if running else 0,
                "sampling_steps": 20 if running else self._last_steps,
            }
        return {
            "progress": 0.5 if running else 0.0,
            "eta_relative": 1.5 if running else 0.0,
            "state": state,
            "current_image": None,
            "textinfo": None,
        }

    def _txt2img(self, body: dict[str, Any], kind: str = "txt2img") -> tuple[int, Any]:
        for name in _INT_FIELDS:
            value = body.get(name)
            bad = value is not None and (isinstance(value, bool) or not isinstance(value, int))
            if bad and not (isinstance(value, str) and value.lstrip("-").isdigit()):
                return 422, validation_body(name)
        for name in _FLOAT_FIELDS:
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return 422, validation_body(name, "value is not a valid float", "type_error.float")
        if "prompt" in body and not isinstance(body["prompt"], str):
            return 422, validation_body("prompt", "str type expected", "type_error.str")

        with self._lock:
            self._running += 1
            self.interrupted.clear()  # state.begin()
            self._last_steps = int(body.get("steps") or 50)
            self._job_timestamp = time.strftime("%Y%m%d%H%M%S")
        try:
            if self.txt2img_delay:
                # An interrupt ends the generation early, like A1111 returning the partial latent.
                self.interrupted.wait(self.txt2img_delay)
            return 200, self._txt2img_response(body, kind)
        except A1111Failure as failure:
            return failure.status, failure.body
        finally:
            with self._lock:
                self._running -= 1
                self._jobs_done += 1

    def _txt2img_response(self, body: dict[str, Any], kind: str = "txt2img") -> dict[str, Any]:
        """A1111's answer (tests/support/a1111_behaviour.py), with real PNGs of the right size."""
        with self._lock:
            response = generate(self.data, body, self._cond_cache, kind)
        response["info"]["job_timestamp"] = self._job_timestamp
        images = []
        for size in response["images"]:
            if self.png_size is None:
                width, height = min(size["width"], 2048), min(size["height"], 2048)
            elif isinstance(self.png_size, int):
                width = height = self.png_size
            else:
                width, height = self.png_size
            images.append(png_base64(width, height))
        response["images"] = images
        response["info"] = json.dumps(response["info"])
        return response

    def _image_tool(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Extras, png-info, interrogate (tests/support/a1111_image_behaviour.py)."""
        upscalers = [u["name"] for u in self.data.upscalers]
        try:
            return 200, image_tool(upscalers, name, body, captions=self.data.interrogation_captions)
        except A1111Failure as failure:
            return failure.status, failure.body

    def _set_options(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 422, validation_body("__root__", "value is not a valid dict", "type_error.dict")
        data = self.data
        if "sd_model_checkpoint" in body:
            ckpt = data.checkpoint_for(body["sd_model_checkpoint"])
            if ckpt is None:
                return 500, exception_body("RuntimeError", f"model {body['sd_model_checkpoint']!r} not found")
            body = {**body, "sd_model_checkpoint": ckpt["title"]}
        data.options.update(body)
        return 200, None

    def _listing(self, name: str) -> Any:
        data = self.data
        table: dict[str, Any] = {
            "sd-models": data.checkpoints,
            "samplers": data.samplers,
            "schedulers": data.schedulers,
            "loras": data.loras,
            "embeddings": data.embeddings,
            "sd-vae": data.vaes,
            "upscalers": data.upscalers,
            "latent-upscale-modes": data.latent_upscale_modes,
            "hypernetworks": data.hypernetworks,
            "face-restorers": data.face_restorers,
            "realesrgan-models": data.realesrgan_models,
            "prompt-styles": data.prompt_styles,
            "scripts": data.scripts,
            "memory": data.memory,
            "options": data.options,
            "cmd-flags": {"api_auth": ":".join(self.auth) if self.auth else None, "nowebui": True},
        }
        return table.get(name, _MISSING)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """The normal (fault-free) answer for one request."""
        if path.startswith(CONTROL):
            return self._control(method, path[len(CONTROL) :], body)
        if method == "GET" and path in self.data.extension_routes:
            return 200, copy.deepcopy(self.data.extension_routes[path])
        if not path.startswith(API):
            return 404, {"detail": "Not Found"}
        name = path[len(API) :]
        if method == "GET":
            if name == "progress":
                return 200, self._progress()
            found = self._listing(name)
            if found is not _MISSING:
                return 200, copy.deepcopy(found)
        elif method == "POST":
            if name in ("txt2img", "img2img"):
                if not isinstance(body, dict):
                    return 422, validation_body("__root__", "value is not a valid dict", "type_error.dict")
                return self._txt2img(body, name)
            if name in _IMAGE_TOOLS and isinstance(body, dict):
                return self._image_tool(name, body)
            if name == "interrupt":
                self.interrupted.set()
                return 200, {}
            if name == "options":
                return self._set_options(body)
            if name in ("refresh-checkpoints", "refresh-loras", "refresh-embeddings", "refresh-vae"):
                return 200, None
        if self._listing(name) is not _MISSING or name in _POST_ONLY:
            return 405, {"detail": "Method Not Allowed"}
        return 404, {"detail": "Not Found"}

    def _control(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        """Remote control, for when the fake runs in another process."""
        if method == "GET" and name == "requests":
            with self._lock:
                return 200, [
                    {**asdict(r), "raw_body": None} for r in self.requests if not r.path.startswith(CONTROL)
                ]
        if method == "POST" and name == "reset":
            self.reset()
            return 200, {}
        if method == "POST" and name == "faults" and isinstance(body, dict):
            for path, spec in body.items():
                self.set_fault(path, **spec)
            return 200, {}
        if method == "POST" and name == "data" and isinstance(body, dict):
            for key, value in body.items():
                setattr(self.data, key.replace("-", "_"), value)
            return 200, {}
        return 404, {"detail": "Not Found"}

    def needs_auth(self, path: str) -> bool:
        # The Lora routes are registered with @app.get, outside A1111's auth (recorded:
        # tests/fixtures/a1111/exchanges.json, "loras_need_no_credentials").
        return (
            self.auth is not None
            and path.startswith(API)
            and path not in (API + "loras", API + "refresh-loras")
        )


_MISSING = object()
_IMAGE_TOOLS = frozenset({"extra-single-image", "extra-batch-images", "png-info", "interrogate"})
_POST_ONLY = frozenset(
    {
        "txt2img",
        "img2img",
        *_IMAGE_TOOLS,
        "interrupt",
        "skip",
        "refresh-checkpoints",
        "refresh-loras",
        "refresh-embeddings",
        "refresh-vae",
    }
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a request that hangs
    allow_reuse_address = True
    fake: FakeA1111


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    # Headers and body leave in one segment: no Nagle/delayed-ACK stall of 40 ms per request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake_a1111: " + format, *args)

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fake._record(
            RecordedRequest(
                method=method,
                path=parts.path,
                query=parse_qs(parts.query),
                headers=dict(self.headers.items()),
                body=body,
                raw_body=raw,
                at=time.monotonic(),
            )
        )
        if raw and body is None:
            self._reply(
                422, {"detail": [{"loc": ["body"], "msg": "invalid JSON", "type": "value_error.jsondecode"}]}
            )
            return

        fault = None if parts.path.startswith(CONTROL) else fake._take_fault(parts.path)
        if fault is not None and fault.hang:
            fake._release.wait(fault.hang)
        if fault is not None and fault.close:
            self._abort()
            return
        if fake.needs_auth(parts.path) and not self._authorised(fake.auth):
            given = self.headers.get("Authorization", "").lower().startswith("basic ")
            detail = "Incorrect username or password" if given else "Not authenticated"
            self._reply(401, {"error": "HTTPException", "detail": detail, "body": "", "errors": ""})
            return
        if fault is not None and fault.status is not None:
            status, payload = fault.status, fault.body
        else:
            # an extension route recorded with its query (``/controlnet/module_list?alias_names=true``) first
            path = f"{parts.path}?{parts.query}" if parts.query else parts.path
            status, payload = fake.handle(
                method, path if path in fake.data.extension_routes else parts.path, body
            )
        if fault is not None and fault.drop:
            self._reply(status, payload, drop=True)
            return
        self._reply(status, payload)

    def _authorised(self, auth: tuple[str, str] | None) -> bool:
        header = self.headers.get("Authorization", "")
        if auth is None:
            return True
        expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        return header == expected

    def _abort(self) -> None:
        """Close the socket without a response (a crashed engine)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _reply(self, status: int, payload: Any, *, drop: bool = False) -> None:
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        elif isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        if drop and len(data) < 64:
            data = data + b" " * (64 - len(data))  # enough that "part of the body" is a real part
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Process-Time", "0.001")
            self.end_headers()
            if drop:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._abort()
                return
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its read timeout fired)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


# --------------------------------------------------------------------------------------------------
# Helpers for tests and the process mode
# --------------------------------------------------------------------------------------------------


def write_pid_file(path: Path, pid: int | None = None) -> Path:
    """Write ``pid`` (default: this process) the way start.sh does."""
    path.write_text(f"{os.getpid() if pid is None else pid}\n")
    return path


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def fake_a1111() -> Iterator[FakeA1111]:
    """A started fake A1111 on a free loopback port, stopped after the test."""
    server = FakeA1111().start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake A1111 server for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--png-size", type=int, default=512)
    parser.add_argument("--pid-file", type=Path, default=None)
    parser.add_argument("--auth", default=None, help="user:password to require, like --api-auth")
    args = parser.parse_args(argv)

    server = FakeA1111(args.host, args.port, png_size=args.png_size)
    if args.auth:
        user, _, password = args.auth.partition(":")
        server.auth = (user, password)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    if args.pid_file is not None:
        write_pid_file(args.pid_file)
    sys.stdout.write(f"listening on http://{args.host}:{server.port}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if args.pid_file is not None:
            args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
