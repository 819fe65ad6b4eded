"""A1111 sampler and scheduler ("Schedule type") names mapped onto diffusers schedulers.

Only names this engine can really run are listed; anything else is rejected with the valid choices, unlike
A1111 v1.10, which silently falls back to ``DPM++ 2M``. Combined legacy names (``"DPM++ 2M Karras"``)
are split the way A1111 does (§3.3 of a1111-api.md).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin


class SamplerError(ValueError):
    """An unknown or unsupported sampler/scheduler name or combination."""


@dataclass(frozen=True)
class Sampler:
    name: str
    aliases: tuple[str, ...]
    cls: type[SchedulerMixin]
    flags: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    name: str
    label: str
    flags: dict[str, Any]
    default_rho: float = -1.0
    need_inner_model: bool = False
    aliases: tuple[str, ...] | None = None


_SDE = {"algorithm_type": "sde-dpmsolver++"}
SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), DPMSolverMultistepScheduler, {}, {"scheduler": "karras"}),
    Sampler(
        "DPM++ SDE",
        ("k_dpmpp_sde",),
        DPMSolverSDEScheduler,
        {},
        {"scheduler": "karras", "second_order": "True", "brownian_noise": "True"},
    ),
    Sampler(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        DPMSolverMultistepScheduler,
        _SDE,
        {"scheduler": "exponential", "brownian_noise": "True"},
    ),
    Sampler(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        DPMSolverMultistepScheduler,
        {**_SDE, "solver_order": 3},
        {"scheduler": "exponential", "discard_next_to_last_sigma": "True", "brownian_noise": "True"},
    ),
    Sampler(
        "Euler a",
        ("k_euler_a", "k_euler_ancestral"),
        EulerAncestralDiscreteScheduler,
        {},
        {"uses_ensd": "True"},
    ),
    Sampler("Euler", ("k_euler",), EulerDiscreteScheduler),
    Sampler("LMS", ("k_lms",), LMSDiscreteScheduler),
    Sampler("Heun", ("k_heun",), HeunDiscreteScheduler, {}, {"second_order": "True"}),
    Sampler(
        "DPM2",
        ("k_dpm_2",),
        KDPM2DiscreteScheduler,
        {},
        {"scheduler": "karras", "discard_next_to_last_sigma": "True", "second_order": "True"},
    ),
    Sampler(
        "DPM2 a",
        ("k_dpm_2_a",),
        KDPM2AncestralDiscreteScheduler,
        {},
        {
            "scheduler": "karras",
            "discard_next_to_last_sigma": "True",
            "uses_ensd": "True",
            "second_order": "True",
        },
    ),
    Sampler("DDIM", ("ddim",), DDIMScheduler),
    Sampler("PLMS", ("plms",), PNDMScheduler, {"skip_prk_steps": True}),
    Sampler("UniPC", ("unipc",), UniPCMultistepScheduler),
    Sampler("LCM", ("k_lcm",), LCMScheduler),
)
SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic", {}),
    Schedule("uniform", "Uniform", {"timestep_spacing": "linspace"}, need_inner_model=True),
    Schedule("karras", "Karras", {"use_karras_sigmas": True}, default_rho=7.0),
    Schedule("exponential", "Exponential", {"use_exponential_sigmas": True}),
    Schedule("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}, True, ("SGMUniform",)),
    Schedule("beta", "Beta", {"use_beta_sigmas": True}, need_inner_model=True),
)
_BY_NAME = {s.name: s for s in SAMPLERS}
_SCHEDULE_BY_KEY = {key: s for s in SCHEDULES for key in (s.name, s.label)}
_SUFFIXES = {key: s for s in SCHEDULES for key in (s.label, s.name, *(s.aliases or ()))}


@dataclass(frozen=True)
class ResolvedSampler:
    """What will run: the sampler, the effective schedule and the diffusers scheduler flags."""

    sampler: Sampler
    schedule: Schedule
    flags: dict[str, Any]

    def build(self, base_config: dict[str, Any]) -> SchedulerMixin:
        return self.sampler.cls.from_config(base_config, **self.flags)


def _supports(cls: type[SchedulerMixin], flags: dict[str, Any]) -> bool:
    """``from_config`` silently drops unknown flags, so check them against the constructor first."""
    params = inspect.signature(cls.__init__).parameters
    return all(name in params for name in flags)


def requested_schedule(sampler_name: str | None, scheduler: str | None) -> str:
    """The schedule A1111's API stores for a request: ``scheduler``, else a combined name's suffix, else
    ``Automatic`` (what the hires pass inherits when ``hr_scheduler`` is null)."""
    if scheduler:
        return scheduler
    name = sampler_name or "Euler"
    if name not in _BY_NAME:
        for key, schedule in _SUFFIXES.items():
            if name.endswith(" " + key) and name[: -len(key) - 1] in _BY_NAME:
                return schedule.label
    return "Automatic"


def resolve(sampler_name: str | None, scheduler: str | None) -> ResolvedSampler:
    """Split/validate A1111 names; ``scheduler`` (explicit) wins over a suffix in ``sampler_name``."""
    name = sampler_name or "Euler"
    suffix: Schedule | None = None
    if name not in _BY_NAME:
        for key, schedule in _SUFFIXES.items():
            if name.endswith(" " + key) and name[: -len(key) - 1] in _BY_NAME:
                name, suffix = name[: -len(key) - 1], schedule
                break
    if name not in _BY_NAME:
        raise SamplerError(f"unknown sampler {sampler_name!r}; available: {', '.join(_BY_NAME)}")
    sampler = _BY_NAME[name]
    if scheduler:
        if scheduler not in _SCHEDULE_BY_KEY:
            labels = ", ".join(s.label for s in SCHEDULES)
            raise SamplerError(f"unknown scheduler {scheduler!r}; available: {labels}")
        schedule = _SCHEDULE_BY_KEY[scheduler]
    else:
        schedule = suffix or _SCHEDULE_BY_KEY["automatic"]
    if schedule.name == "automatic":
        # A1111's "Automatic" means the sampler's own preferred schedule, e.g. Karras for DPM++ 2M.
        schedule = _SCHEDULE_BY_KEY.get(sampler.options.get("scheduler", ""), schedule)
    flags = {**sampler.flags, **schedule.flags}
    if not _supports(sampler.cls, schedule.flags):
        valid = [s.label for s in SCHEDULES if _supports(sampler.cls, s.flags)]
        raise SamplerError(
            f"sampler {sampler.name!r} cannot use schedule type {schedule.label!r} in this engine; "
            f"valid: {', '.join(valid)}"
        )
    return ResolvedSampler(sampler, schedule, flags)


def samplers_listing() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers`` in A1111's shape."""
    return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS]


def schedulers_listing() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers`` in A1111's shape."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) if s.aliases else None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULES
    ]
