"""After generating: check what the engine reports it did against the payload the worker sent.

A1111 substitutes silently: a checkpoint that vanished after pre-flight becomes the current one, an
unknown sampler becomes ``DPM++ 2M``, an unknown scheduler ``Automatic``, an unknown LoRA is skipped,
a setting an earlier request left behind applies to this one, and an interrupted generation answers
200 with a cut-short image. Pre-flight (``worker.preflight``) refuses what it can before generating;
this module reads A1111's own report afterwards and fails the job with ``engine_error`` (``cancelled``
for an interruption) naming every field that differs.

Which reports are reliable was measured on A1111 v1.10.1 (docs/testing.md, "What A1111 reports"):

* ``info``: ``sd_model_name`` (file stem), ``sd_model_hash`` (absent under ``--no-hashing``),
  ``clip_skip``, ``sd_vae_name``, ``sampler_name``, ``steps``, ``cfg_scale``, ``width``/``height`` (the
  first pass with hires) and ``all_seeds`` are what ran.
* ``parameters`` echoes the request, not what ran (``"DPM++ 2M Karras"`` comes back with ``scheduler``
  null): never used.
* ``Schedule type`` is the resolved schedule: the sampler's own default for ``Automatic`` (``DPM++ 2M``
  → ``Karras``), ``Automatic`` for a sampler without one, and ``Automatic`` for an unknown scheduler.
* ``Lora hashes`` names each LoRA applied, as written in the prompt; only when the engine hashes files.
  LoRA tags in the negative prompt are never applied by A1111.
* ``TI hashes`` is dropped when the same prompt is repeated (A1111 caches the conditioning): not checked.
* An interrupt or skip shows only in ``/progress`` (``state.interrupted`` stays true until the next job). The
  handler reads it where someone else could have interrupted (``WorkerSettings.engine_private``) or where the
  worker itself sent an interrupt meanwhile; otherwise nothing can have interrupted the job.
* img2img records ``Denoising strength`` and the mask fields in the infotext (``worker.image_input_verify``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from worker.a1111.catalog import EngineCatalog
from worker.a1111.progress import GenerationProgress
from worker.errors import Cancelled, EngineFailed
from worker.extension_results import check_extensions
from worker.image_input_verify import image_input_problems
from worker.translate import LORA_TAG

# One ``key: value`` pair of an infotext's last line; values with commas or colons are JSON-quoted.
_INFOTEXT_PAIR = re.compile(r'\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_LORA_NAME_DROPPED = str.maketrans("", "", ":,")  # A1111 strips these from names in "Lora hashes"


def parse_infotext(text: str) -> dict[str, str]:
    """The ``key: value`` pairs of an A1111 infotext's last line (quoted values unquoted)."""
    last = text.strip().rsplit("\n", 1)[-1]
    pairs: dict[str, str] = {}
    for key, value in _INFOTEXT_PAIR.findall(last):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        pairs[key.strip()] = value
    return pairs


def lora_hash_names(value: str) -> set[str]:
    """``"a: 0123456789ab, b: ba9876543210"`` → ``{"a", "b"}``."""
    return {part.rsplit(":", 1)[0].strip() for part in value.split(",") if ":" in part}


def _stem(name: str) -> str:
    """A checkpoint title or VAE name → the file's stem (``sub/x.safetensors [hash]`` → ``x``)."""
    return PurePath(name.split(" [", 1)[0].replace("\\", "/")).stem


def _same_number(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-6)
    except (TypeError, ValueError):
        return False


def expected_schedule(payload: Mapping[str, Any], catalog: EngineCatalog) -> str | None:
    """The ``Schedule type`` A1111 records for this payload (``None``: cannot be told)."""
    requested = payload.get("scheduler")
    labels = {s.name.lower(): s.label for s in catalog.schedulers}
    labels.update({s.label.lower(): s.label for s in catalog.schedulers})
    if requested and str(requested).lower() not in labels:
        return None  # pre-flight refuses unknown schedulers; a raw one cannot be predicted here
    label = labels.get(str(requested).lower()) if requested else None
    if label and label != "Automatic":
        return label
    sampler = next((s for s in catalog.samplers if s.name == payload.get("sampler_name")), None)
    if sampler is None:
        return None
    if sampler.default_scheduler:
        return labels.get(sampler.default_scheduler.lower(), "Automatic")
    return "Automatic"


def check_not_interrupted(info: Mapping[str, Any], progress: GenerationProgress | None) -> None:
    """An interrupted or skipped generation answers 200 with cut-short images: fail it as ``cancelled``."""
    if info.get("interrupted") is True or (progress is not None and progress.interrupted):
        raise Cancelled(
            "the engine's generation was interrupted before it finished (POST /sdapi/v1/interrupt or skip "
            "from outside the worker); its cut-short images were not returned"
        )


def check_generation(
    payload: Mapping[str, Any],
    catalog: EngineCatalog,
    images: Sequence[Any],
    info: Mapping[str, Any],
) -> list[str]:
    """Compare A1111's report with ``payload``; raise ``EngineFailed`` naming every field that differs.

    Returns:
        `list[str]`: warnings for what could not be checked (e.g. LoRAs on an engine that does not hash).
    """
    lora_mismatches, warnings = _lora_problems(payload, info.get("extra_generation_params") or {}, info)
    images, extension_mismatches = check_extensions(payload, images, info)  # docs/extensions.md
    mismatches = [
        *_model_problems(payload, catalog, info),
        *_sampling_problems(payload, catalog, info),
        *_size_and_count_problems(payload, images, info),
        *lora_mismatches,
        *image_input_problems(payload, parse_infotext(str((info.get("infotexts") or [""])[0]))),
        *extension_mismatches,
    ]
    if mismatches:
        raise EngineFailed(
            "the engine did not generate what the job asked for: " + "; ".join(mismatches),
            details={"mismatches": mismatches},
        )
    return warnings


def _model_problems(payload: Mapping[str, Any], catalog: EngineCatalog, info: Mapping[str, Any]) -> list[str]:
    """Checkpoint (by name, then by hash), clip skip and VAE."""
    mismatches: list[str] = []
    overrides = payload.get("override_settings") or {}
    checkpoint = overrides.get("sd_model_checkpoint")
    used_model = info.get("sd_model_name")
    if checkpoint and used_model and _stem(str(checkpoint)).lower() != str(used_model).lower():
        mismatches.append(f"checkpoint {used_model!r} instead of the requested {_stem(str(checkpoint))!r}")
    elif checkpoint and used_model:
        entry = next((c for c in catalog.checkpoints if c.title == checkpoint), None)
        used_hash = info.get("sd_model_hash")
        if entry is not None and entry.sha256 and used_hash and not entry.sha256.startswith(str(used_hash)):
            mismatches.append(
                f"checkpoint hash {used_hash} instead of {entry.sha256[:10]} "
                f"(another file named {used_model!r})"
            )
    clip_skip = overrides.get("CLIP_stop_at_last_layers")
    reported_skip = info.get("clip_skip")
    if clip_skip is not None and reported_skip is not None and not _same_number(reported_skip, clip_skip):
        mismatches.append(f"clip skip {reported_skip} instead of {clip_skip}")
    vae = overrides.get("sd_vae")
    if vae is not None and "sd_vae_name" in info:
        problem = _vae_problem(str(vae), info.get("sd_vae_name"), str(used_model or ""))
        if problem:
            mismatches.append(problem)
    return mismatches


def _sampling_problems(
    payload: Mapping[str, Any], catalog: EngineCatalog, info: Mapping[str, Any]
) -> list[str]:
    """Sampler, schedule type, steps and CFG scale."""
    mismatches: list[str] = []
    sampler = payload.get("sampler_name")
    if sampler and info.get("sampler_name") and info["sampler_name"] != sampler:
        mismatches.append(f"sampler {info['sampler_name']!r} instead of {sampler!r}")
    infotexts = info.get("infotexts") or []
    fields = parse_infotext(str(infotexts[0])) if infotexts else {}
    extra = info.get("extra_generation_params") or {}
    schedule = expected_schedule(payload, catalog)
    reported = fields.get("Schedule type") or extra.get("Schedule type")
    if schedule and reported and reported != schedule:
        mismatches.append(f"schedule type {reported!r} instead of {schedule!r}")
    for name, label in (("steps", "steps"), ("cfg_scale", "CFG scale")):
        wanted_value, reported_value = payload.get(name), info.get(name)
        if None not in (wanted_value, reported_value) and not _same_number(reported_value, wanted_value):
            mismatches.append(f"{label} {reported_value} instead of {wanted_value}")
    return mismatches


def _size_and_count_problems(
    payload: Mapping[str, Any], images: Sequence[Any], info: Mapping[str, Any]
) -> list[str]:
    """Size (of the first pass), seeds, and the number of images."""
    mismatches: list[str] = []
    if not payload.get("firstphase_width") and not payload.get("firstphase_height"):
        for side in ("width", "height"):
            if payload.get(side) is not None and info.get(side) is not None and info[side] != payload[side]:
                mismatches.append(f"{side} {info[side]} instead of {payload[side]}")
    count = int(payload.get("batch_size") or 1) * int(payload.get("n_iter") or 1)
    seed = payload.get("seed")
    seeds = info.get("all_seeds")
    if isinstance(seed, int) and seed >= 0 and isinstance(seeds, list):
        varied = float(payload.get("subseed_strength") or 0) > 0
        wanted = [seed] * count if varied else [seed + i for i in range(count)]
        if seeds[:count] != wanted:
            mismatches.append(f"seeds {seeds[:count]} instead of {wanted}")
    if payload.get("send_images", True) and len(images) != count:
        mismatches.append(f"{len(images)} images instead of {count}")
    return mismatches


def _vae_problem(requested: str, used: Any, checkpoint_stem: str) -> str | None:
    """``Automatic`` allows no VAE or the checkpoint's own (``<stem>.vae.*``); a file must be that file."""
    used_name = str(used) if used else None
    if requested == "None":
        return f"VAE {used_name!r} instead of None (the checkpoint's baked-in VAE)" if used_name else None
    if requested == "Automatic":
        if used_name and checkpoint_stem and not used_name.lower().startswith(checkpoint_stem.lower() + "."):
            own = f"{checkpoint_stem}.vae.*"
            return f"VAE {used_name!r} instead of Automatic (no VAE file, or the checkpoint's own {own})"
        return None
    if used_name is None or _stem(used_name).lower() != _stem(requested).lower():
        return f"VAE {used_name!r} instead of {requested!r}"
    return None


def _lora_problems(
    payload: Mapping[str, Any], extra: Mapping[str, Any], info: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    if payload.get("disable_extra_networks"):
        return [], []
    wanted = [match.group(1).strip() for match in LORA_TAG.finditer(str(payload.get("prompt") or ""))]
    if not wanted:
        return [], []
    hashes = extra.get("Lora hashes")
    if not hashes:
        if not info.get("sd_model_hash"):
            return [], [
                "the LoRAs' use could not be verified: the engine reports no hashes (A1111 --no-hashing)"
            ]
        return [f"LoRA {name!r} was not applied (no 'Lora hashes' in the infotext)" for name in wanted], []
    applied = lora_hash_names(str(hashes))
    missing = [name for name in wanted if name.translate(_LORA_NAME_DROPPED) not in applied]
    return [f"LoRA {name!r} was not applied (Lora hashes: {hashes})" for name in missing], []
