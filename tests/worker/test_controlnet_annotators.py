"""ControlNet preprocessors that need annotator weights pass pre-flight only when the files are on the volume
(``worker/preflight/controlnet_annotators.py``), through the handler in front of the fake A1111 serving the
listings the real A1111 with ControlNet v1.1.455 answered (tests/fixtures/a1111/extensions.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_a1111 import FakeA1111
from worker.a1111.client import A1111Client
from worker.handler import JobRunner
from worker.preflight.controlnet_annotators import (
    ANNOTATOR_WEIGHTS,
    ANNOTATORS_FOLDER,
    LABELS,
    UNMAPPED,
    missing_annotator_weights,
)
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "a1111" / "extensions.json").read_text())
LISTINGS: dict[str, Any] = RECORDED["listings"]
MODULES: list[str] = LISTINGS["/controlnet/module_list"]["module_list"]
IMAGE = RECORDED["meta"]["control_image"]
#: what the extension runs without any weight file (read from its preprocessors at the pinned commit)
WEIGHT_FREE = {
    "none", "canny", "invert", "threshold", "scribble_xdog", "tile_resample", "tile_colorfix",
    "tile_colorfix+sharp", "blur_gaussian", "color", "shuffle", "reference_only", "reference_adain",
    "reference_adain+attn", "recolor_luminance", "recolor_intensity", "lineart_standard", "inpaint",
    "inpaint_only", "mediapipe_face",
}  # fmt: skip

#: (module, the files it needs, as the extension writes them under its annotator folder)
CASES: list[tuple[str, tuple[str, ...]]] = [
    ("depth", ("midas/dpt_hybrid-midas-501f0c75.pt",)),
    (
        "openpose_full",
        ("openpose/body_pose_model.pth", "openpose/hand_pose_model.pth", "openpose/facenet.pth"),
    ),
    ("dw_openpose_full", ("openpose/yolox_l.onnx", "openpose/dw-ll_ucoco_384.onnx")),
    ("lineart", ("lineart/sk_model.pth",)),
    ("lineart_coarse", ("lineart/sk_model2.pth",)),
    ("mlsd", ("mlsd/mlsd_large_512_fp32.pth",)),
    ("hed", ("hed/ControlNetHED.pth",)),
    ("normal_bae", ("normal_bae/scannet.pt",)),
    ("depth_leres++", ("leres/res101.pth", "leres/latest_net_G.pth")),
    ("segmentation", ("uniformer/upernet_global_small.pth",)),
    ("ip-adapter_clip_sd15", ("clip_vision/clip_h.pth",)),
]


def with_extensions(fake: FakeA1111) -> FakeA1111:
    fake.data.scripts = LISTINGS["/sdapi/v1/scripts"]
    fake.data.extension_routes = {
        path: body for path, body in LISTINGS.items() if not path.startswith("/sdapi/")
    }
    return fake


def run(fake: FakeA1111, models: Path, extension_fields: dict[str, Any]) -> Any:
    settings = WorkerSettings.model_validate(
        {"a1111_url": fake.url, "job_timeout_s": 5, "models_dir": models}
    )
    runner = JobRunner(settings, A1111Client(fake.url, connect_timeout_s=1, request_timeout_s=5))
    job = {"prompt": "a portrait", "steps": 2, "width": 64, "height": 64, **extension_fields}
    return runner.run({"id": "job-1", "input": job})


def unit(module: str) -> dict[str, Any]:
    return {"enabled": True, "module": module, "model": "control_rand_sd15", "image": IMAGE}


def raw(module: str) -> dict[str, Any]:
    return {"alwayson_scripts": {"controlnet": {"args": [unit("canny"), unit(module)]}}}


def native(module: str) -> dict[str, Any]:
    return {"controlnet": [unit("canny"), unit(module)]}


FORMS = [(raw, "alwayson_scripts.controlnet.args[1].module"), (native, "controlnet[1].module")]


@pytest.mark.parametrize(("module", "files"), CASES, ids=[module for module, _ in CASES])
@pytest.mark.parametrize(("form", "field"), FORMS, ids=["raw", "native"])
def test_a_preprocessor_without_its_weights_is_refused_naming_them(
    fake_a1111: FakeA1111, tmp_path: Path, module: str, files: tuple[str, ...], form: Any, field: str
) -> None:
    folder = tmp_path / "models" / ANNOTATORS_FOLDER
    for name in files[:-1]:  # all but one: one file missing is enough to refuse
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"w")
    out = run(with_extensions(fake_a1111), tmp_path / "models", form(module))
    assert out["error"].startswith(
        f"model_not_found: {field}: ControlNet preprocessor {module!r} needs {files[-1]} in {folder}, "
    ), out
    assert "download" in out["error"], out
    assert fake_a1111.requests_to("txt2img", "POST") == []


@pytest.mark.parametrize(("module", "files"), CASES, ids=[module for module, _ in CASES])
def test_a_preprocessor_with_its_weights_on_the_volume_passes(
    fake_a1111: FakeA1111, tmp_path: Path, module: str, files: tuple[str, ...]
) -> None:
    for name in files:
        (tmp_path / "models" / ANNOTATORS_FOLDER / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / ANNOTATORS_FOLDER / name).write_bytes(b"w")
    out = run(with_extensions(fake_a1111), tmp_path / "models", raw(module))
    assert "error" not in out, out
    (sent,) = [r.body for r in fake_a1111.requests_to("txt2img", "POST")]
    assert sent["alwayson_scripts"]["controlnet"]["args"][1]["module"] == module


@pytest.mark.parametrize("module", ["none", "canny", "invert", "threshold", "tile_resample", "shuffle"])
def test_weight_free_preprocessors_pass_with_no_annotator_folder(
    fake_a1111: FakeA1111, tmp_path: Path, module: str
) -> None:
    out = run(with_extensions(fake_a1111), tmp_path / "models", native(module))
    assert "error" not in out, out


def test_every_preprocessor_the_extension_lists_is_mapped_weight_free_or_named_unmapped() -> None:
    assert sorted(set(MODULES) - set(ANNOTATOR_WEIGHTS) - WEIGHT_FREE - UNMAPPED) == []
    assert sorted((set(ANNOTATOR_WEIGHTS) | UNMAPPED | set(LABELS.values())) - set(MODULES)) == []
    assert not set(ANNOTATOR_WEIGHTS) & (WEIGHT_FREE | UNMAPPED)


@pytest.mark.parametrize(("label", "name"), sorted(LABELS.items()))
def test_a_ui_label_needs_the_same_files_as_its_name(tmp_path: Path, label: str, name: str) -> None:
    assert missing_annotator_weights(label, tmp_path) == list(ANNOTATOR_WEIGHTS[name])
