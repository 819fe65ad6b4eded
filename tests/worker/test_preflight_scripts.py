"""Pre-flight of ``alwayson_scripts`` through the handler, against the fake A1111 serving the listings the real
A1111 with ControlNet and ADetailer answered (tests/fixtures/a1111/extensions.json): a wrong script, model,
preprocessor or argument form is refused before anything is generated, naming the unit, the field and the
nearest valid names; good units reach A1111 unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.a1111.extensions import ExtensionCatalog
from worker.errors import ModelIncompatible
from worker.handler import JobRunner
from worker.model_types import ModelFacts
from worker.preflight.scripts import ScriptContext, check_alwayson_scripts
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "a1111" / "extensions.json").read_text())
LISTINGS: dict[str, Any] = RECORDED["listings"]
TITLE = RECORDED["controlnet_title"]
IMAGE = RECORDED["meta"]["control_image"]


def with_extensions(fake: FakeA1111) -> FakeA1111:
    fake.data.scripts = LISTINGS["/sdapi/v1/scripts"]
    fake.data.extension_routes = {
        path: body for path, body in LISTINGS.items() if not path.startswith("/sdapi/")
    }
    return fake


def make_runner(fake: FakeA1111) -> JobRunner:
    settings = WorkerSettings.model_validate({"a1111_url": fake.url, "job_timeout_s": 5})
    return JobRunner(settings, A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5))


def run(fake: FakeA1111, scripts: dict[str, Any], runner: JobRunner | None = None) -> Any:
    job = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, "alwayson_scripts": scripts}
    return (runner or make_runner(fake)).run({"id": "job-1", "input": job})


def unit(**changes: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "canny", "model": "control_rand_sd15", "image": IMAGE, **changes}


def ad(*units: dict[str, Any], enable: Any = True) -> dict[str, Any]:
    return {"ADetailer": {"args": [enable, False, *units]}}


def cn(*units: Any) -> dict[str, Any]:
    return {"controlnet": {"args": list(units)}}


GOOD: list[tuple[str, dict[str, Any]]] = [
    ("canny by name", cn(unit())),
    ("canny by title with hash", cn(unit(model=TITLE))),
    ("two units and ADetailer", {**cn(unit(), unit(module="invert")), **ad({"ad_model": "face_always.pt"})}),
    ("disabled unit naming nothing real", cn(unit(enabled=False, model="nope", module="nope"))),
    ("ADetailer mediapipe", ad({"ad_model": "mediapipe_face_full"})),
    (
        "ADetailer full unit",
        ad({"ad_model": "face_always.pt", "ad_mask_k": 1, "ad_prompt": "a face", "ad_steps": 2}),
    ),
    ("ADetailer disabled", ad({"ad_model": "nope.pt"}, enable=False)),
    ("lower-case script name", {"adetailer": {"args": [True, False, {"ad_model": "face_rand.pt"}]}}),
    (
        "ADetailer unit first (v25 takes it)",
        {"ADetailer": {"args": [{"ad_model": "face_always.pt"}, True, False]}},
    ),
    ("another installed script", {"seed": {"args": []}}),
    ("preprocessor by its UI label (color)", cn(unit(module="t2ia_color_grid"))),
    ("three units: every slot", cn(unit(), unit(module="invert"), unit())),
    ("a disabled fourth unit past the slots", cn(unit(), unit(), unit(), unit(enabled=False))),
    (
        "ADetailer values at their bounds",
        ad(
            {
                "ad_model": "face_always.pt",
                "ad_confidence": 1,
                "ad_mask_k": 0,
                "ad_mask_filter_method": "Area",
            }
        ),
    ),
    (
        "ADetailer number as text (pydantic converts it)",
        ad({"ad_model": "face_always.pt", "ad_confidence": "0.5"}),
    ),
]

#: (case, alwayson_scripts, error code, fragments the message must contain)
REFUSED: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    (
        "unknown ControlNet model",
        cn(unit(model="control_nope_sd15")),
        "model_not_found",
        ("alwayson_scripts.controlnet.args[0].model", "'control_nope_sd15'", "control_rand_sd15"),
    ),
    (
        "unknown preprocessor",
        cn(unit(), unit(module="canny_nope")),
        "input_invalid",
        ("alwayson_scripts.controlnet.args[1].module", "'canny_nope'", "canny"),
    ),
    (
        "model None",
        cn(unit(model="None")),
        "model_not_found",
        ("args[0].model", "control_rand_sd15"),
    ),
    (
        "positional unit",
        cn([True, "canny", "control_rand_sd15", 1.0]),
        "input_invalid",
        ("alwayson_scripts.controlnet.args[0]", "objects"),
    ),
    (
        "txt2img unit without an image",
        cn(unit(image=None)),
        "input_invalid",
        ("alwayson_scripts.controlnet.args[0].image", "needs a control image"),
    ),
    ("args not a list", {"controlnet": {"args": unit()}}, "input_invalid", ('{"args": [...]}',)),
    (
        "script not installed",
        {"reactor": {"args": [True]}},
        "input_invalid",
        ("alwayson_scripts.reactor", "no txt2img script 'reactor'"),
    ),
    (
        "unknown ADetailer model",
        ad({"ad_model": "face_nope.pt"}),
        "model_not_found",
        ("alwayson_scripts.ADetailer.args[2].ad_model", "'face_nope.pt'", "face_rand.pt"),
    ),
    (
        "ADetailer field renamed in v24.11",
        ad({"ad_model": "face_always.pt", "ad_mask_k_largest": 1}),
        "input_invalid",
        ("alwayson_scripts.ADetailer.args[2].ad_mask_k_largest", "nearest: ad_mask_k", "skip the whole unit"),
    ),
    (
        "ADetailer enabled without a unit",
        {"ADetailer": {"args": [True, False, False]}},
        "input_invalid",
        ("ADetailer is enabled but has no unit",),
    ),
    (
        "ADetailer unit alone: its default first unit would run too",
        {"ADetailer": {"args": [{"ad_model": "face_always.pt"}]}},
        "input_invalid",
        ("fewer than 3 arguments", "send [true, false, {unit}, ...]"),
    ),
    (
        "preprocessor by its UI label, weights not on the volume",
        cn(unit(module="depth_midas")),
        "model_not_found",
        ("alwayson_scripts.controlnet.args[0].module", "midas/dpt_hybrid-midas-501f0c75.pt"),
    ),
    (
        "an enabled fourth unit: A1111 has 3 slots and drops it",
        cn(unit(), unit(), unit(), unit(module="invert")),
        "input_invalid",
        ("alwayson_scripts.controlnet.args[3]", "at most 3 units", "control_net_unit_count"),
    ),
    (
        "ADetailer confidence as a percentage",
        ad({"ad_model": "face_always.pt", "ad_confidence": 30}),
        "input_invalid",
        ("alwayson_scripts.ADetailer.args[2].ad_confidence", "30 is out of range: it must be at most 1"),
    ),
    (
        "ADetailer steps 0",
        ad({"ad_model": "face_always.pt", "ad_use_steps": True, "ad_steps": 0}),
        "input_invalid",
        ("args[2].ad_steps", "it must be more than 0", "skip the whole unit"),
    ),
    (
        "ADetailer filter method it does not have",
        ad({"ad_model": "face_always.pt", "ad_mask_filter_method": "Largest"}),
        "input_invalid",
        ("args[2].ad_mask_filter_method", "'Largest' is not one of 'Area', 'Confidence'"),
    ),
    (
        "ADetailer model as a bare string",
        {"ADetailer": {"args": [True, False, "face_always.pt"]}},
        "input_invalid",
        ("alwayson_scripts.ADetailer.args[2]", "which it would ignore"),
    ),
]


@pytest.mark.parametrize(("case", "scripts"), GOOD, ids=[case for case, _ in GOOD])
def test_good_units_reach_a1111_unchanged(fake_a1111: FakeA1111, case: str, scripts: dict[str, Any]) -> None:
    out = run(with_extensions(fake_a1111), scripts)
    assert "error" not in out, out
    (sent,) = [r.body for r in fake_a1111.requests_to("txt2img", "POST")]
    assert sent["alwayson_scripts"] == scripts


@pytest.mark.parametrize(
    ("case", "scripts", "code", "fragments"), REFUSED, ids=[case for case, *_ in REFUSED]
)
def test_refused_before_generating(
    fake_a1111: FakeA1111, case: str, scripts: dict[str, Any], code: str, fragments: tuple[str, ...]
) -> None:
    out = run(with_extensions(fake_a1111), scripts)
    assert out["error"].startswith(f"{code}: "), out
    for fragment in fragments:
        assert fragment in out["error"], (fragment, out["error"])
    assert fake_a1111.requests_to("txt2img", "POST") == []


@pytest.mark.parametrize(("engine", "who"), [("a1111", "this A1111"), ("embedded", "the embedded engine")])
def test_an_engine_without_the_extensions_refuses_their_scripts(
    fake_a1111: FakeA1111, engine: str, who: str
) -> None:
    settings = WorkerSettings.model_validate(
        {"a1111_url": fake_a1111.url, "job_timeout_s": 5, "engine": engine}
    )
    runner = JobRunner(settings, A1111Client(fake_a1111.url, connect_timeout_s=1, request_timeout_s=5))
    out = run(fake_a1111, cn(unit()), runner)
    assert out["error"].startswith("input_invalid: "), out
    assert f"{who} has no txt2img script 'controlnet' (extension not installed?)" in out["error"]
    assert fake_a1111.requests_to("txt2img", "POST") == []
    assert not [r for r in fake_a1111.requests if r.path.startswith("/controlnet/")]


def test_a_missing_model_is_looked_up_again_once(fake_a1111: FakeA1111) -> None:
    """The lists are read once per worker; a ControlNet copied onto the volume later is found by a refetch."""
    runner = make_runner(with_extensions(fake_a1111))
    assert "error" not in run(fake_a1111, cn(unit()), runner)
    assert "error" not in run(fake_a1111, cn(unit()), runner)
    models = LISTINGS["/controlnet/model_list"]["model_list"]
    fake_a1111.data.extension_routes["/controlnet/model_list"] = {
        "model_list": [*models, "control_new [00000000]"]
    }
    assert "error" not in run(fake_a1111, cn(unit(model="control_new")), runner)
    out = run(fake_a1111, cn(unit(model="control_gone")), runner)
    assert out["error"].startswith("model_not_found: "), out
    lists = [r for r in fake_a1111.requests if r.path == "/controlnet/model_list"]
    assert len(lists) == 3  # the first read, the refetch for control_new, one refetch for control_gone


class Lists:
    def __init__(self) -> None:
        self.catalog = ExtensionCatalog(
            scripts={"txt2img": ("controlnet",)},
            controlnet_models=("None", TITLE),
            controlnet_modules=("none", "canny"),
        )

    def extensions(self, *, refresh: bool = False) -> ExtensionCatalog:
        return self.catalog


def facts(kind: str, name: str, architecture: str) -> ModelFacts:
    return ModelFacts(kind=kind, file_name=f"{name}.safetensors", architecture=architecture)  # type: ignore[arg-type]


@pytest.mark.parametrize(("checkpoint", "controlnet"), [("sdxl", "sd15"), ("sd15", "sdxl")])
def test_controlnet_for_another_architecture_is_refused(checkpoint: str, controlnet: str) -> None:
    context = ScriptContext(
        checkpoint=facts("checkpoint", "base", checkpoint),
        controlnet_facts=lambda name: (
            facts("controlnet", name, controlnet) if name == "control_rand_sd15" else None
        ),
    )
    with pytest.raises(
        ModelIncompatible, match=r"args\[0\]\.model: controlnet control_rand_sd15\.safetensors is for"
    ):
        check_alwayson_scripts(cn(unit()), Lists(), context)


@pytest.mark.parametrize("architecture", ["sd15", "unknown"])
def test_controlnet_of_the_same_or_unknown_architecture_passes(architecture: str) -> None:
    context = ScriptContext(
        checkpoint=facts("checkpoint", "base", "sd15"),
        controlnet_facts=lambda name: facts("controlnet", name, architecture),
    )
    assert check_alwayson_scripts(cn(unit()), Lists(), context) == []
    assert check_alwayson_scripts(cn(unit()), Lists(), ScriptContext(checkpoint=None)) == []


def test_the_peers_adetailer_example_is_refused_naming_the_renamed_field(fake_a1111: FakeA1111) -> None:
    """runpod-worker-a1111's docs/api/a1111/txt2img-adetailer.md (envelope form) sends ``ad_mask_k_largest``,
    which ADetailer >= 24.11 no longer has: on the real v25.3.0 the whole unit is dropped without a word."""
    unit = {
        "ad_model": "face_yolov8n.pt",
        "ad_confidence": 0.3,
        "ad_mask_k_largest": 0,
        "ad_dilate_erode": 32,
    }
    payload = {
        "prompt": "realistic photo of fantastic happy man",
        "steps": 2,
        "width": 64,
        "height": 64,
        "sampler_name": "DPM++ SDE",
        "scheduler": "karras",
        "alwayson_scripts": {"ADetailer": {"args": [True, False, unit]}},
    }
    job = {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": payload}
    out = make_runner(with_extensions(fake_a1111)).run({"id": "peer", "input": job})
    assert out["error"].startswith("input_invalid: alwayson_scripts.ADetailer.args[2].ad_mask_k_largest"), out
    assert "nearest: ad_mask_k" in out["error"]
    assert fake_a1111.requests_to("txt2img", "POST") == []
