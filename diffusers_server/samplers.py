"""A1111 v1.10's sampler and scheduler ("Schedule type") catalogue: names, aliases, options, resolution.

Every sampler and schedule type A1111 lists is here and runs on this engine's own k-diffusion-style
implementation (:mod:`diffusers_server.sampling`). Unknown names are rejected with the valid choices, unlike
A1111 v1.10, which silently falls back to ``DPM++ 2M``. Combined legacy names (``"DPM++ 2M Karras"``) are
split the way A1111 does: a trailing schedule label (``Karras``, ``Exponential``, ...) names the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SamplerFamily = Literal["k", "timesteps", "lcm"]


class SamplerError(ValueError):
    """An unknown or unsupported sampler/scheduler name or combination."""


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler: ``algorithm`` names the implementation in :mod:`diffusers_server.sampling`."""

    name: str
    aliases: tuple[str, ...]
    algorithm: str
    family: SamplerFamily = "k"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def second_order(self) -> bool:
        """A1111's ``SamplerData.total_steps``: prompt schedules count two model calls per step."""
        return bool(self.options.get("second_order"))

    def total_steps(self, steps: int) -> int:
        return steps * 2 if self.second_order else steps


@dataclass(frozen=True)
class Schedule:
    name: str
    label: str
    default_rho: float = -1.0
    need_inner_model: bool = False
    aliases: tuple[str, ...] | None = None


_KARRAS_2ND = {"scheduler": "karras", "second_order": True}
SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), "dpmpp_2m", options={"scheduler": "karras"}),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), "dpmpp_sde", options={**_KARRAS_2ND, "brownian_noise": True}),
    Sampler(
        "DPM++ 2M SDE",
        ("k_dpmpp_2m_sde",),
        "dpmpp_2m_sde",
        options={"scheduler": "exponential", "brownian_noise": True},
    ),
    Sampler(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        "dpmpp_2m_sde_heun",
        options={"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
    ),
    Sampler(
        "DPM++ 2S a", ("k_dpmpp_2s_a",), "dpmpp_2s_ancestral", options={**_KARRAS_2ND, "uses_ensd": True}
    ),
    Sampler(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        "dpmpp_3m_sde",
        options={"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
    ),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), "euler_ancestral", options={"uses_ensd": True}),
    Sampler("Euler", ("k_euler",), "euler"),
    Sampler("LMS", ("k_lms",), "lms"),
    Sampler("Heun", ("k_heun",), "heun", options={"second_order": True}),
    Sampler("DPM2", ("k_dpm_2",), "dpm_2", options={**_KARRAS_2ND, "discard_next_to_last_sigma": True}),
    Sampler(
        "DPM2 a",
        ("k_dpm_2_a",),
        "dpm_2_ancestral",
        options={**_KARRAS_2ND, "discard_next_to_last_sigma": True, "uses_ensd": True},
    ),
    Sampler("DPM fast", ("k_dpm_fast",), "dpm_fast", options={"uses_ensd": True}),
    Sampler("DPM adaptive", ("k_dpm_ad",), "dpm_adaptive", options={"uses_ensd": True}),
    Sampler("Restart", ("restart",), "restart", options=dict(_KARRAS_2ND)),
    Sampler("DDIM", ("ddim",), "ddim", "timesteps"),
    Sampler("DDIM CFG++", ("ddim_cfgpp",), "ddim_cfgpp", "timesteps"),
    Sampler("PLMS", ("plms",), "plms", "timesteps"),
    Sampler("UniPC", ("unipc",), "unipc", "timesteps"),
    Sampler("LCM", ("k_lcm",), "lcm", "lcm"),
)
SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", need_inner_model=True),
    Schedule("karras", "Karras", default_rho=7.0),
    Schedule("exponential", "Exponential"),
    Schedule("polyexponential", "Polyexponential", default_rho=1.0),
    Schedule("sgm_uniform", "SGM Uniform", need_inner_model=True, aliases=("SGMUniform",)),
    Schedule("kl_optimal", "KL Optimal"),
    Schedule("align_your_steps", "Align Your Steps"),
    Schedule("simple", "Simple", need_inner_model=True),
    Schedule("normal", "Normal", need_inner_model=True),
    Schedule("ddim", "DDIM", need_inner_model=True),
    Schedule("beta", "Beta", need_inner_model=True),
)
_BY_NAME = {s.name: s for s in SAMPLERS}
_SCHEDULE_BY_KEY = {key: s for s in SCHEDULES for key in (s.name, s.label)}
_SUFFIXES = {key: s for s in SCHEDULES for key in (s.label, s.name, *(s.aliases or ()))}


@dataclass(frozen=True)
class ResolvedSampler:
    """What will run: the sampler and the schedule type requested for it (``Automatic`` kept as such)."""

    sampler: Sampler
    requested: Schedule

    @property
    def schedule(self) -> Schedule:
        """The effective schedule: ``Automatic`` means the sampler's own preferred one (e.g. Karras for
        DPM++ 2M); samplers without a preference keep ``Automatic`` (the model's own discrete schedule)."""
        if self.requested.name == "automatic":
            return _SCHEDULE_BY_KEY.get(str(self.sampler.options.get("scheduler", "")), self.requested)
        return self.requested


def _split(sampler_name: str | None) -> tuple[str, Schedule | None]:
    name = sampler_name or "Euler"
    if name in _BY_NAME:
        return name, None
    for key, schedule in _SUFFIXES.items():
        if name.endswith(" " + key) and name[: -len(key) - 1] in _BY_NAME:
            return name[: -len(key) - 1], schedule
    return name, None


def requested_schedule(sampler_name: str | None, scheduler: str | None) -> str:
    """The schedule A1111's API stores for a request: ``scheduler``, else a combined name's suffix, else
    ``Automatic`` (what the hires pass inherits when ``hr_scheduler`` is null)."""
    if scheduler:
        return scheduler
    suffix = _split(sampler_name)[1]
    return suffix.label if suffix else "Automatic"


def resolve(sampler_name: str | None, scheduler: str | None) -> ResolvedSampler:
    """Split/validate A1111 names; ``scheduler`` (explicit) wins over a suffix in ``sampler_name``."""
    name, suffix = _split(sampler_name)
    if name not in _BY_NAME:
        raise SamplerError(f"unknown sampler {sampler_name!r}; available: {', '.join(_BY_NAME)}")
    if scheduler:
        if scheduler not in _SCHEDULE_BY_KEY:
            labels = ", ".join(s.label for s in SCHEDULES)
            raise SamplerError(f"unknown scheduler {scheduler!r}; available: {labels}")
        schedule = _SCHEDULE_BY_KEY[scheduler]
    else:
        schedule = suffix or _SCHEDULE_BY_KEY["automatic"]
    return ResolvedSampler(_BY_NAME[name], schedule)


def samplers_listing() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers`` in A1111's shape (its pydantic model turns option values into strings)."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.options.items()}}
        for s in SAMPLERS
    ]


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
