"""The network-volume worker's ControlNet and ADetailer example payloads (runpod-worker-a1111 at 13a611f6,
``tests/img2img_controlnet.py``, ``tests/img2img_controlnet_sdxl.py``, ``tests/txt2img_adetailer.py`` and
``docs/api/a1111/img2img-controlnet.md``; kept in ``tests/fixtures/jobs/extensions/`` with ``$IMAGE`` where they
carry a photo) as cases, each in the three forms a job may take: the peer's envelope, the plain A1111 body and
the native form with raw ``alwayson_scripts``.

Each case is the peer's payload made cheap (64x64, 2 steps, a 64-pixel preprocessor resolution, no refiner)
with at most one named change (a txt2img variant of the img2img example, ADetailer's renamed field), so what
passes or fails is the payload's own shape. Shared by ``tests/a1111/test_extension_payloads.py`` (the real
A1111) and ``tests/worker/test_fake_extension_payloads.py`` (the fake, replaying what the real one did).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.real_a1111 import Launched
    from worker.handler import JobRunner

#: the peers' published example payloads (runpod-worker-a1111 docs/api/a1111/), kept as published
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "jobs" / "peers"
IMAGE = "$IMAGE"
#: the A1111 fields the native form spells differently; the rest it shares
NATIVE_SHARED = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "batch_size",
    "init_images",
    "denoising_strength",
    "alwayson_scripts",
)
SMALL: dict[str, Any] = {"steps": 2, "width": 64, "height": 64}
#: the changes the peers' ControlNet units need on v1.1.455, which refuses a unit with both spellings of a
#: field and leaves a unit without "enabled" off
NO_GUIDANCE = "guidance left out (the old name of guidance_end, which the unit also sends)"
RUNNABLE = f'{NO_GUIDANCE}; "enabled": true added (v1.1.455 units are off by default)'
#: the infotext entries of the extensions: ``ControlNet 0: "Module: canny, Model: x`` and ``ADetailer model: y``
ENTRIES = re.compile(r'ControlNet \d+: "Module: [^,]+, Model: [^,]+|ADetailer model[^:]*: [^,]+')


@dataclass(frozen=True)
class Case:
    """One payload; ``expect`` is ``"ok"`` or the error code every form must answer with, ``mentions`` the
    fragments its message (or, on success, the infotext) must contain."""

    name: str
    envelope: dict[str, Any]
    expect: str = "ok"
    mentions: tuple[str, ...] = ()
    changed: str = ""
    images: int = 1

    @property
    def forms(self) -> dict[str, dict[str, Any]]:
        return job_forms(self.envelope)


def peer(name: str) -> dict[str, Any]:
    """A fixture: the peer's envelope job as published."""
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def edge_image(size: int = 64) -> str:
    """A ``size``-square PNG with edges (a white disc on dark grey), base64: canny finds its outline."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (30, 30, 30))
    ImageDraw.Draw(image).ellipse((size // 5, size // 6, size * 4 // 5, size * 5 // 6), fill="white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def small(envelope: dict[str, Any], image: str) -> dict[str, Any]:
    """The peer's job made cheap: 64x64, 2 steps, ControlNet's preprocessor at 64 px, no refiner (none is
    on the test volume), ``$IMAGE`` replaced by ``image``."""
    job: dict[str, Any] = _substituted(copy.deepcopy(envelope), image)
    payload = job["input"]["payload"]
    payload.update(SMALL)
    payload.pop("refiner_checkpoint", None)
    payload.pop("refiner_switch_at", None)
    for unit in _units(payload, "controlnet"):
        unit["processor_res"] = 64
    return job


def job_forms(envelope: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The same job as the peer's envelope, the plain A1111 body, and the native form."""
    payload = envelope["input"]["payload"]
    return {
        "envelope": envelope,
        "a1111": {"input": copy.deepcopy(payload)},
        "native": {"input": native(payload)},
    }


def native(payload: dict[str, Any]) -> dict[str, Any]:
    """The native spelling of an A1111 body: ``checkpoint``, ``vae``, ``sampler``/``scheduler``."""
    job = {key: copy.deepcopy(payload[key]) for key in NATIVE_SHARED if key in payload}
    overrides = payload.get("override_settings") or {}
    if "sd_model_checkpoint" in overrides:
        job["checkpoint"] = overrides["sd_model_checkpoint"]
    if "sd_vae" in overrides:
        job["vae"] = overrides["sd_vae"]
    if "sampler_name" in payload:
        job["sampler"] = payload["sampler_name"]
    if "scheduler" in payload:
        job["scheduler"] = payload["scheduler"]
    return job


def sd15_cases(image: str) -> list[Case]:
    """The SD1.5 cases: ControlNet img2img and txt2img, ADetailer txt2img and img2img; each peer payload as
    published is refused where ControlNet v1.1.455 or ADetailer v25.3.0 would fail or skip it."""
    published = small(peer("peer_img2img_controlnet"), image)
    controlnet = runnable(published)
    adetailer = small(peer("peer_txt2img_adetailer"), image)
    cn_entry = 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny'
    return [
        Case(
            "cn_img2img_as_published",
            published,
            expect="input_invalid",
            mentions=("alwayson_scripts.controlnet.args[0]", "'guidance' and 'guidance_end'"),
        ),
        Case(
            "cn_img2img_without_enabled",
            _without_guidance(published),
            expect="input_invalid",
            mentions=("alwayson_scripts.controlnet.args[0].enabled",),
            changed=NO_GUIDANCE,
        ),
        Case("cn_img2img", controlnet, mentions=(cn_entry,), images=2, changed=RUNNABLE),
        Case(
            "cn_txt2img",
            _as_txt2img(controlnet, unit_image=image),
            mentions=(cn_entry,),
            images=2,
            changed=f"{RUNNABLE}; txt2img: init_images and denoising_strength left out, the unit given the image",
        ),
        Case(
            "cn_txt2img_without_image",
            _as_txt2img(controlnet, unit_image=None),
            expect="input_invalid",
            mentions=("alwayson_scripts.controlnet.args[0].image",),
            changed=f"{RUNNABLE}; txt2img as the img2img example sends it: the unit has no image",
        ),
        Case(
            "ad_txt2img_as_published",
            adetailer,
            expect="input_invalid",
            mentions=("ad_mask_k_largest", "ad_mask_k"),
        ),
        Case(
            "ad_txt2img",
            _renamed_ad_field(adetailer),
            mentions=("ADetailer model: face_yolov8n.pt",),
            changed="ad_mask_k_largest renamed ad_mask_k (ADetailer >= 24.11)",
        ),
        Case(
            "ad_img2img",
            _as_img2img(_renamed_ad_field(adetailer), image),
            mentions=("ADetailer model: face_yolov8n.pt",),
            changed="img2img: the init image added; ad_mask_k_largest renamed ad_mask_k",
        ),
    ]


def sdxl_cases(image: str) -> list[Case]:
    """The SDXL cases: the peer's SDXL ControlNet example (img2img, and as txt2img), and its documented one
    that puts an SD1.5 ControlNet on the SDXL checkpoint."""
    published = small(peer("peer_img2img_controlnet_sdxl"), image)
    controlnet = runnable(published)
    entry = 'ControlNet 0: "Module: canny, Model: diffusers_xl_canny_full'
    return [
        Case(
            "sdxl_cn_img2img_as_published",
            published,
            expect="input_invalid",
            mentions=("'guidance' and 'guidance_end'",),
        ),
        Case("sdxl_cn_img2img", controlnet, mentions=(entry,), images=2, changed=RUNNABLE),
        Case(
            "sdxl_cn_txt2img",
            _as_txt2img(controlnet, unit_image=image),
            mentions=(entry,),
            images=2,
            changed=f"{RUNNABLE}; txt2img: init_images left out, the unit given the image",
        ),
        Case(
            "sdxl_doc_sd15_unit",
            runnable(small(peer("peer_img2img_controlnet_doc"), image)),
            expect="model_incompatible",
            mentions=("alwayson_scripts.controlnet.args[0].model", "is for SD1.5", "is SDXL"),
            changed=RUNNABLE,
        ),
    ]


def outcome(out: dict[str, Any]) -> dict[str, Any]:
    """What a job answered, as the fake must answer it: the error, or the images and extension entries."""
    if "error" in out:
        return {"error": str(out["error"])}
    infotext = str(json.loads(out["info"])["infotexts"][0])
    return {"images": len(out["images"]), "entries": ENTRIES.findall(infotext)}


def check(case: Case, got: dict[str, Any]) -> None:
    """``got`` (``outcome``) is what ``case`` expects."""
    if case.expect == "ok":
        assert "error" not in got, got
        assert got["images"] == case.images, got
        for fragment in case.mentions:
            assert any(entry.startswith(fragment) for entry in got["entries"]), got
        return
    assert got.get("error", "").startswith(f"{case.expect}: "), got
    for fragment in case.mentions:
        assert fragment in got["error"], got


def run_case(runner: JobRunner, started: Launched, case: Case, form: str) -> dict[str, Any]:
    """Run ``case`` in ``form`` on the launched A1111 and ``check`` it (a refusal generates nothing);
    returns its ``outcome``."""
    before = generations(started)
    out = runner.run({"id": f"{case.name}-{form}", **case.forms[form]})
    assert isinstance(out, dict)
    got = outcome(out)
    check(case, got)
    if case.expect != "ok":
        assert generations(started) == before
    return got


def generations(started: Launched) -> int:
    """How many generations the launched A1111 has logged."""
    log = started.log()
    return log.count("POST /sdapi/v1/txt2img") + log.count("POST /sdapi/v1/img2img")


def registry_runner(started: Launched) -> JobRunner:
    """The worker's job path on the launched A1111, with the registry on its volume (it knows the models'
    architectures: the ControlNet compatibility check needs them)."""
    from worker.a1111.client import A1111Client
    from worker.handler import JobRunner
    from worker.registry.models import Catalogue
    from worker.registry.registry import ModelRegistry
    from worker.settings import WorkerSettings

    models = Path(started.env["WORKER_MODELS_DIR"])
    settings = WorkerSettings.model_validate(
        {"a1111_url": started.url, "job_timeout_s": 900, "models_dir": str(models)}
    )
    registry = ModelRegistry(
        models_dir=models,
        registry_path=models.parent / "registry.json",
        catalogue=Catalogue(),
        allowed_hosts=(),
        allow_pickle=True,  # the registry may describe the detectors; nothing is downloaded here
    )
    return JobRunner(settings, A1111Client(started.url, request_timeout_s=600), provider=registry)


def write_vae(checkpoint: Path, target: Path) -> None:
    """A checkpoint's own VAE as a standalone file (``first_stage_model.*`` without the prefix)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    prefix = "first_stage_model."
    with safe_open(str(checkpoint), framework="numpy") as weights:
        names = [k for k in weights.keys() if k.startswith(prefix)]  # noqa: SIM118 (not a mapping)
        tensors = {k[len(prefix) :]: weights.get_tensor(k) for k in names}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))


def peer_volume(tmp: Path, ext_dir: Path, files: list[tuple[str, str, Path]], vae: tuple[Path, str]) -> Path:
    """The random models under the peer's names (``files``: kind folder, name, source; ``vae``: the
    checkpoint whose VAE is written, its name) and A1111's data dir with both extensions (start.sh's layout)."""
    from tests.support.real_a1111 import place_model_file

    models = tmp / "models"
    for kind, name, source in files:
        (models / kind).mkdir(parents=True, exist_ok=True)
        place_model_file(source, models / kind / name)
    write_vae(vae[0], models / "vae" / vae[1])
    extensions = tmp / "a1111-data" / "extensions"
    extensions.mkdir(parents=True)
    for extension in (ext_dir / "extensions").iterdir():
        (extensions / extension.name).symlink_to(extension)
    return models


def _substituted(value: Any, image: str) -> Any:
    if value == IMAGE:
        return image
    if isinstance(value, list):
        return [_substituted(item, image) for item in value]
    if isinstance(value, dict):
        return {key: _substituted(item, image) for key, item in value.items()}
    return value


def _units(payload: dict[str, Any], script: str) -> list[dict[str, Any]]:
    for name, entry in (payload.get("alwayson_scripts") or {}).items():
        if name.lower() == script:
            return [unit for unit in entry.get("args", []) if isinstance(unit, dict)]
    return []


def _endpoint(envelope: dict[str, Any], endpoint: str) -> dict[str, Any]:
    job = copy.deepcopy(envelope)
    job["input"]["api"]["endpoint"] = f"/sdapi/v1/{endpoint}"
    return job


def _as_txt2img(envelope: dict[str, Any], unit_image: str | None) -> dict[str, Any]:
    job = _endpoint(envelope, "txt2img")
    payload = job["input"]["payload"]
    payload.pop("init_images")
    payload.pop("denoising_strength", None)
    if unit_image is not None:
        for unit in _units(payload, "controlnet"):
            unit["image"] = unit_image
    return job


def _as_img2img(envelope: dict[str, Any], image: str) -> dict[str, Any]:
    job = _endpoint(envelope, "img2img")
    job["input"]["payload"].update(init_images=[image], denoising_strength=0.5)
    return job


def _without_guidance(envelope: dict[str, Any]) -> dict[str, Any]:
    job = copy.deepcopy(envelope)
    for unit in _units(job["input"]["payload"], "controlnet"):
        unit.pop("guidance", None)
    return job


def runnable(envelope: dict[str, Any]) -> dict[str, Any]:
    """The peer's ControlNet units as v1.1.455 runs them (``RUNNABLE``)."""
    job = _without_guidance(envelope)
    for unit in _units(job["input"]["payload"], "controlnet"):
        unit["enabled"] = True
    return job


def _renamed_ad_field(envelope: dict[str, Any]) -> dict[str, Any]:
    job = copy.deepcopy(envelope)
    for unit in _units(job["input"]["payload"], "adetailer"):
        unit["ad_mask_k"] = unit.pop("ad_mask_k_largest")
    return job
