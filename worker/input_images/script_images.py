"""The images inside a job's ``alwayson_scripts``, hostile until proven otherwise, like init images.

ControlNet (v1.1.455, ``internal_controlnet/args.py``) decodes what a unit carries with A1111's own decoder,
inside the generation: a truncated PNG, a decompression bomb or a 16-bit mask fails there, late, or worse.
Each image a unit may carry goes through ``worker.input_images`` (base64 or data URI, ``https`` URLs fetched
by the worker under ``WORKER_ALLOW_IMAGE_URLS``, the byte and pixel caps, PNG/JPEG/WebP, modes) and is
replaced by the checked base64 before pre-flight, so A1111 never sees a URL or an unchecked image:

* ``image`` (and its old name ``input_image``): one image, ``{"image": ..., "mask": ...}``, ``[image, mask]``,
  or a list of ``{"image", "mask"}`` (several inputs, IP-Adapter);
* ``mask`` (and its Forge name ``mask_image``), ``effective_region_mask``: one image each.

A string ControlNet cannot decode as base64 it opens as a path on A1111's disk (``parse_image``): here it is
refused like any other non-image. ``ipadapter_input`` is refused outright: ControlNet passes it to
``torch.load``, a pickle, which can run code inside A1111, and it does so for every unit, enabled or not.
ADetailer takes no image (its units only name detectors and prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from worker.extension_results import CONTROLNET
from worker.input_images.refusal import refuse
from worker.translate_extensions import native_location

if TYPE_CHECKING:
    from worker.input_images.check import CheckedImage
    from worker.schema import Txt2ImgJob

#: a unit's fields that hold one image each (ControlNet's names and aliases)
SINGLE_IMAGE_FIELDS = ("mask", "mask_image", "effective_region_mask")
#: a unit's fields that may hold an image with its mask, or several
IMAGE_FIELDS = ("image", "input_image")
#: base64 that ControlNet unpickles (``torch.load``)
PICKLE_FIELDS = ("ipadapter_input",)

Read = Callable[[Any, str], "CheckedImage"]


def check_script_images(job: Txt2ImgJob, read: Read) -> Txt2ImgJob:
    """The job with every ControlNet image checked and replaced by its checked base64 (``read``:
    ``InputImages.read``); the job itself when it has none.

    Raises:
        InputInvalid: naming the image (``controlnet[0].image``, ``alwayson_scripts.controlnet.args[0].mask``)
            and what is wrong with it.
    """
    scripts = job.alwayson_scripts or {}
    native = {"controlnet": job.controlnet is not None, "adetailer": job.adetailer is not None}

    def label(where: str) -> str:
        return native_location(where, **native)

    checked = {}
    for name, entry in scripts.items():
        args = entry.get("args") if isinstance(entry, dict) else None
        if str(name).lower() != CONTROLNET or not isinstance(args, list):
            continue  # pre-flight refuses a malformed entry, naming it
        where = f"alwayson_scripts.{name}.args"
        units = [
            _unit(unit, f"{where}[{index}]", read, label) if isinstance(unit, dict) else unit
            for index, unit in enumerate(args)
        ]
        checked[name] = {**entry, "args": units}
    if not checked:
        return job
    return job.model_copy(update={"alwayson_scripts": {**scripts, **checked}})


def _unit(unit: dict[str, Any], where: str, read: Read, label: Callable[[str], str]) -> dict[str, Any]:
    for field in PICKLE_FIELDS:
        if unit.get(field) is not None:
            raise refuse(
                label(f"{where}.{field}"),
                "ControlNet loads it with torch.load (a pickle, which can run code inside A1111); this "
                "worker does not accept it: send the IP-Adapter's image as image instead",
            )
    checked = dict(unit)
    for field in SINGLE_IMAGE_FIELDS:
        if unit.get(field) is not None:
            checked[field] = read(unit[field], label(f"{where}.{field}")).base64
    for field in IMAGE_FIELDS:
        if unit.get(field) is not None:
            checked[field] = _image_value(unit[field], label(f"{where}.{field}"), read)
    return checked


def _image_value(value: Any, where: str, read: Read) -> Any:
    """One of the forms ControlNet's ``get_input_images_rgba`` takes, each image checked."""
    if isinstance(value, dict):
        return _image_and_mask(value, where, read)
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [_image_and_mask(item, f"{where}[{i}]", read) for i, item in enumerate(value)]
    if isinstance(value, list) and len(value) == 2:
        return [read(item, f"{where}[{i}]").base64 for i, item in enumerate(value)]
    if isinstance(value, list):
        raise refuse(
            where,
            f"a list of {len(value)} values: ControlNet takes an image, [image, mask], or a list of "
            '{"image": ..., "mask": ...}',
        )
    return read(value, where).base64


def _image_and_mask(value: dict[str, Any], where: str, read: Read) -> dict[str, Any]:
    if value.get("image") is None:
        raise refuse(where, 'ControlNet needs its "image" ({"image": ..., "mask": ...})')
    checked = {**value, "image": read(value["image"], f"{where}.image").base64}
    if value.get("mask") is not None:
        checked["mask"] = read(value["mask"], f"{where}.mask").base64
    return checked
