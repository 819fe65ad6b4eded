"""Record what the real A1111 v1.10.1 does with ControlNet and ADetailer, as golden transcripts for the fake.

Launches A1111 through ``start.sh`` with both extensions (``scripts/setup_a1111_extensions.sh``) and the
random-weight models of ``scripts/a1111_extension_models.py`` (a full-size SD1.5 checkpoint: the extension
only knows full-size ControlNets), then records the extensions' listings, A1111's script listings, and
txt2img/img2img requests with ControlNet and ADetailer units, good and bad, with their ``info`` or error body.
Images in requests are replaced by ``$CONTROL_IMAGE``; in answers they are kept as their sizes. Usage
(docs/testing.md)::

    A1111_DIR=... A1111_EXT_DIR=... A1111_EXT_MODELS=... .venv/bin/python \\
        scripts/record_a1111_extension_transcripts.py [--out tests/fixtures/a1111/extensions.json]

``A1111_EXT_MODELS`` holds ``checkpoints/*.safetensors``, ``ControlNet/`` and ``adetailer/`` (the models
script's DEST plus a checkpoint).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.real_a1111 import a1111_dir, launched  # noqa: E402
from tests.support.real_a1111_extensions import (  # noqa: E402
    CONTROLNET,
    DETECTOR_ALWAYS,
    DETECTOR_NONE,
    control_image,
    extension_dirs,
    extension_env,
    prepared,
)

log = logging.getLogger("record_a1111_extension_transcripts")

BASE: dict[str, Any] = {
    "prompt": "a portrait",
    "steps": 2,
    "width": 64,
    "height": 64,
    "seed": 11,
    "sampler_name": "Euler",
}
IMAGE = "$CONTROL_IMAGE"
RECORDED_WITH = "A1111 v1.10.1, sd-webui-controlnet 56cec5b2, adetailer v25.3.0; start.sh, CPU"
IMG2IMG: dict[str, Any] = {"init_images": [IMAGE], "denoising_strength": 0.5}


def unit(**changes: Any) -> dict[str, Any]:
    """A ControlNet unit as the peers' example payloads send it (dict form)."""
    return {
        "enabled": True,
        "module": "canny",
        "model": CONTROLNET,
        "image": IMAGE,
        "weight": 1.0,
        "resize_mode": "Crop and Resize",
        "processor_res": 64,
        "threshold_a": 100,
        "threshold_b": 200,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": "Balanced",
        "pixel_perfect": False,
        **changes,
    }


def controlnet(*units: Any) -> dict[str, Any]:
    return {"alwayson_scripts": {"controlnet": {"args": list(units)}}}


def adetailer(args: list[Any]) -> dict[str, Any]:
    return {"alwayson_scripts": {"ADetailer": {"args": args}}}


def ad_unit(**changes: Any) -> dict[str, Any]:
    """One ADetailer pass on the largest box only (``ad_mask_k``; ``ad_mask_k_largest`` before v24.11)."""
    return {"ad_model": DETECTOR_ALWAYS, "ad_confidence": 0.3, "ad_mask_k": 1, **changes}


#: (name, endpoint, body changes): sent in this order to one fresh A1111, the most telling first (each
#: answer is written as it comes: on a slow machine the recording can be cut short and still be used)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("cn_two_units_canny_invert", "txt2img", controlnet(unit(), unit(module="invert", weight=0.5))),
    ("ad_detection", "txt2img", adetailer([True, False, ad_unit()])),
    ("ad_no_detection", "txt2img", adetailer([True, False, ad_unit(ad_model=DETECTOR_NONE)])),
    ("cn_unknown_model", "txt2img", controlnet(unit(model="control_nope_sd15"))),
    ("ad_unknown_field", "txt2img", adetailer([True, False, ad_unit(ad_mask_k_largest=1)])),
    ("ad_unknown_model", "txt2img", adetailer([True, False, ad_unit(ad_model="face_nope.pt")])),
    ("unknown_script", "txt2img", {"alwayson_scripts": {"reactor": {"args": [True]}}}),
    ("cn_unknown_module", "txt2img", controlnet(unit(module="canny_nope"))),
    ("cn_positional_list", "txt2img", controlnet([True, "canny", CONTROLNET, 1.0, IMAGE])),
    ("ad_dict_first", "txt2img", adetailer([ad_unit(), True, False])),
    ("cn_model_none", "txt2img", controlnet(unit(model="None"))),
    ("cn_no_image", "txt2img", controlnet(unit(image=None))),
    ("img2img_cn_canny", "img2img", {**IMG2IMG, **controlnet(unit())}),
    (
        "img2img_ad",
        "img2img",
        {**IMG2IMG, **adetailer([True, False, ad_unit()])},
    ),
    ("cn_canny_model_with_hash", "txt2img", controlnet(unit(model="$CONTROLNET_TITLE"))),
    ("cn_disabled_unit", "txt2img", controlnet(unit(enabled=False))),
    ("ad_mediapipe", "txt2img", adetailer([True, False, ad_unit(ad_model="mediapipe_face_full")])),
    ("cn_args_not_a_list", "txt2img", {"alwayson_scripts": {"controlnet": {"args": unit()}}}),
    ("cn_unknown_field", "txt2img", controlnet(unit(no_such_field=1))),
    ("cn_bad_control_mode", "txt2img", controlnet(unit(control_mode="Loud"))),
    ("ad_only_dict", "txt2img", adetailer([ad_unit()])),
    ("ad_model_none", "txt2img", adetailer([True, False, ad_unit(ad_model="None")])),
    ("ad_disabled", "txt2img", adetailer([False, False, ad_unit()])),
    ("cn_script_name_capitalised", "txt2img", {"alwayson_scripts": {"ControlNet": {"args": [unit()]}}}),
    ("plain", "txt2img", {}),
]
LISTINGS = (
    "/sdapi/v1/scripts",
    "/controlnet/version",
    "/controlnet/model_list",
    "/controlnet/module_list",
    "/controlnet/module_list?alias_names=true",
    "/controlnet/settings",
    "/adetailer/v1/version",
    "/adetailer/v1/ad_model",
    "/adetailer/v1/schema",
)


def substitute(value: Any, image: str, title: str) -> Any:
    """The request as sent: placeholders replaced by the control image and the model's title."""
    if value == IMAGE:
        return image
    if value == "$CONTROLNET_TITLE":
        return title
    if isinstance(value, list):
        return [substitute(item, image, title) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, image, title) for key, item in value.items()}
    return value


def recorded_answer(response: requests.Response, generation: bool) -> Any:
    from PIL import Image

    try:
        payload = response.json()
    except ValueError:
        return response.text
    if not (generation and response.status_code == 200):
        return payload
    sizes = []
    for data in payload["images"]:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            sizes.append({"width": image.width, "height": image.height})
    parameters = {
        k: v for k, v in payload["parameters"].items() if k not in ("init_images", "alwayson_scripts")
    }
    return {"images": sizes, "parameters": parameters, "info": json.loads(payload["info"])}


def scrubbed(value: Any, folders: dict[str, str]) -> Any:
    if isinstance(value, str):
        for path, name in sorted(folders.items(), key=lambda pair: -len(pair[0])):
            value = value.replace(path, name)
        return value
    if isinstance(value, list):
        return [scrubbed(item, folders) for item in value]
    if isinstance(value, dict):
        return {key: scrubbed(item, folders) for key, item in value.items()}
    return value


def record(
    url: str, image: str, write: Callable[[dict[str, Any]], None], skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    listings = {path: requests.get(url + path, timeout=60).json() for path in LISTINGS}
    for modules in ("/controlnet/module_list", "/controlnet/module_list?alias_names=true"):
        listings[modules].pop("module_detail", None)  # ~60 KB of UI hints
    info = requests.get(url + "/sdapi/v1/script-info", timeout=60).json()
    listings["/sdapi/v1/script-info"] = [s for s in info if s["name"] in ("controlnet", "adetailer")]
    title = next(m for m in listings["/controlnet/model_list"]["model_list"] if m.startswith(CONTROLNET))
    exchanges: list[dict[str, Any]] = []
    recording = {"listings": listings, "exchanges": exchanges, "controlnet_title": title}
    for name, endpoint, changes in CASES:
        if name in skip:
            continue
        body = {**BASE, **changes}
        response = requests.post(
            f"{url}/sdapi/v1/{endpoint}", json=substitute(body, image, title), timeout=900
        )
        answer = recorded_answer(response, endpoint in ("txt2img", "img2img"))
        exchanges.append(
            {
                "name": name,
                "endpoint": endpoint,
                "body": body,
                "status": response.status_code,
                "response": answer,
            }
        )
        log.info("%-32s %s -> %d", name, endpoint, response.status_code)
        write(recording)
    return recording


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "a1111" / "extensions.json")
    parser.add_argument("--skip", nargs="*", default=[], help="cases not to send (recorded already)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    install, dirs = a1111_dir(), extension_dirs()
    if install is None or dirs is None:
        parser.error("set A1111_DIR, A1111_EXT_DIR (setup_a1111_extensions.sh) and A1111_EXT_MODELS")
    ext_dir, source = dirs
    with tempfile.TemporaryDirectory(prefix="a1111-ext-record-", dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        models, data = prepared(tmp, ext_dir, source)
        folders = {str(models): "$MODELS_DIR", str(data): "$DATA_DIR", str(install): "$A1111_DIR"}
        folders[str(ext_dir.resolve())] = "$A1111_EXT_DIR"

        def write(recording: dict[str, Any]) -> None:
            meta = {
                "recorded_with": RECORDED_WITH,
                "script": "scripts/record_a1111_extension_transcripts.py",
                "control_image": control_image(),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({**scrubbed(recording, folders), "meta": meta}, indent=1, ensure_ascii=False)
            args.out.write_text(text + "\n")

        env = extension_env(install, ext_dir, tmp, models)
        with launched(env, tmp / "start.log", timeout_s=900) as started:
            record(started.url, control_image(), write, frozenset(args.skip))
    log.info("transcripts written to %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
