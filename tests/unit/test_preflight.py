"""Name resolution against the engine's lists: pure matching tables and the refresh-on-miss rule."""

from __future__ import annotations

import pytest

from tests.support.fixtures import StaticEngineLists, engine_catalog, job_fixture
from worker.errors import InputInvalid, ModelNotFound, WorkerError
from worker.model_types import ModelFacts, ModelType, ProvisionedModel
from worker.preflight.matching import match_checkpoint, match_lora, match_sampler
from worker.preflight.resolver import Preflight
from worker.schema import GenerationRequest, Txt2ImgJob, parse_job_input

CATALOG = engine_catalog()


def job_of(raw: dict) -> Txt2ImgJob:
    request = parse_job_input(raw, max_images=8)
    assert isinstance(request, GenerationRequest)
    return request.job


@pytest.mark.parametrize(
    ("ref", "title"),
    [
        ("Deliberate_v6.safetensors [9aba26abdf]", "Deliberate_v6.safetensors [9aba26abdf]"),
        ("Deliberate_v6.safetensors", "Deliberate_v6.safetensors [9aba26abdf]"),
        ("deliberate_v6", "Deliberate_v6.safetensors [9aba26abdf]"),
        ("9aba26abdf", "Deliberate_v6.safetensors [9aba26abdf]"),
        ("5d5d5a5c", "Deliberate_v6.safetensors [9aba26abdf]"),
        (
            "9ABA26ABDFCD46073E0A1D42027A3A3BCC969F562D58A03637BF0A0DED6586C9",
            "Deliberate_v6.safetensors [9aba26abdf]",
        ),
        ("sdxl/jibMixIllustrious_v20.safetensors", "sdxl/jibMixIllustrious_v20.safetensors"),
        ("jibmixillustrious_v20", "sdxl/jibMixIllustrious_v20.safetensors"),
        ("sdxl_jibMixIllustrious_v20", "sdxl/jibMixIllustrious_v20.safetensors"),
        ("deliberate", None),
        ("9aba26abd", None),
    ],
)
def test_match_checkpoint(ref: str, title: str | None) -> None:
    found = match_checkpoint(ref, CATALOG.checkpoints)
    assert (found.title if found else None) == title


@pytest.mark.parametrize(
    ("ref", "sampler", "scheduler"),
    [
        ("Euler a", "Euler a", None),
        ("euler A", "Euler a", None),
        ("k_euler_a", "Euler a", None),
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE", "DPM++ 2M SDE", None),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("Euler a SGM Uniform", "Euler a", "SGM Uniform"),
        ("Euler SGMUniform", "Euler", "SGM Uniform"),
        ("DDIM karras", "DDIM", "Karras"),
        ("Euler ancestral", None, None),
        ("Karras", None, None),
    ],
)
def test_match_sampler(ref: str, sampler: str | None, scheduler: str | None) -> None:
    found = match_sampler(ref, CATALOG.samplers, CATALOG.schedulers)
    if sampler is None:
        assert found is None
    else:
        assert found is not None
        assert found[0].name == sampler
        assert (found[1].label if found[1] else None) == scheduler


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("add-detail-xl", "add-detail-xl"),
        ("ADD-DETAIL-XL", "add-detail-xl"),
        ("boringRealism", "boring_reality_primaryV4"),
        ("boring_reality_primaryv4", "boring_reality_primaryV4"),
        ("add_detail", None),
    ],
)
def test_match_lora(ref: str, name: str | None) -> None:
    found = match_lora(ref, CATALOG.loras)
    assert (found.name if found else None) == name


@pytest.mark.parametrize(
    ("fixture", "error", "fragments"),
    [
        (
            "bad_sampler",
            InputInvalid,
            ["sampler 'Euler ancestral' not found", "nearest", "Euler a", "valid samplers"],
        ),
        (
            "bad_checkpoint",
            ModelNotFound,
            ["checkpoint 'deliberate_v5' not found", "Deliberate_v6.safetensors"],
        ),
        ("bad_lora_in_prompt", ModelNotFound, ["LoRA 'add_detail' not found", "add-detail-xl"]),
    ],
)
def test_unknown_names_fail_with_nearest(
    fixture: str, error: type[WorkerError], fragments: list[str]
) -> None:
    engine = StaticEngineLists(CATALOG)
    with pytest.raises(error) as caught:
        Preflight(engine).resolve(job_of(job_fixture(fixture)["input"]))
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_miss_refreshes_the_engine_list_once() -> None:
    engine = StaticEngineLists(CATALOG)
    job = job_of({"prompt": "a <lora:nope:1> <lora:nada:1>", "checkpoint": "missing"})
    with pytest.raises(ModelNotFound):
        Preflight(engine).resolve(job)
    assert engine.refreshed == ["checkpoints"]
    engine = StaticEngineLists(CATALOG)
    with pytest.raises(ModelNotFound):
        Preflight(engine).resolve(job_of({"prompt": "a <lora:nope:1> <lora:nada:1>"}))
    assert engine.refreshed == ["loras"]


def test_a_hit_refreshes_nothing() -> None:
    engine = StaticEngineLists(CATALOG)
    Preflight(engine).resolve(job_of(job_fixture("native_full")["input"]))
    assert engine.refreshed == []
    assert engine.fetches == 1


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (
            {"prompt": "a", "checkpoint": "deliberate_v6", "override_settings": {"sd_model_checkpoint": "x"}},
            "conflicting values for checkpoint",
        ),
        (
            {"prompt": "a", "clip_skip": 2, "override_settings": {"CLIP_stop_at_last_layers": 1}},
            "conflicting values for clip_skip",
        ),
        (
            {"prompt": "a", "sampler": "DPM++ 2M Karras", "scheduler": "exponential"},
            "conflicting values for scheduler",
        ),
        ({"prompt": "a", "scheduler": "karas"}, "scheduler 'karas' not found; nearest: Karras"),
        ({"prompt": "a", "hires": {"upscaler": "4x-UltraSharp"}}, "hires upscaler '4x-UltraSharp' not found"),
        ({"prompt": "a", "vae": "vae-ft-mse"}, "VAE 'vae-ft-mse' not found"),
        ({"prompt": "a <lora:Add-Detail-XL:1>"}, "case-sensitively"),
    ],
)
def test_invalid_combinations(raw: dict, fragment: str) -> None:
    with pytest.raises(WorkerError, match=fragment):
        Preflight(StaticEngineLists(CATALOG)).resolve(job_of(raw))


class RecordingProvider:
    """A registry stand-in that knows one catalogue LoRA by id, to check the provisioning path."""

    def __init__(self, engine: StaticEngineLists) -> None:
        self.engine = engine
        self.provisioned: list[tuple[str, str]] = []

    def describe(self, kind: ModelType, reference: str) -> ModelFacts | None:
        if kind == "lora" and reference == "boring_reality_primaryV4":
            return ModelFacts(
                kind="lora", file_name="boring_reality_primaryV4.safetensors", default_weight=0.4
            )
        return None

    def catalogue_file(self, kind: ModelType, reference: str) -> str | None:
        return None

    def provision(self, kind: ModelType, reference: str) -> ProvisionedModel | None:
        self.provisioned.append((kind, reference))
        if reference == "boring-reality-v4":
            facts = ModelFacts(
                kind="lora", file_name="boring_reality_primaryV4.safetensors", default_weight=0.4
            )
            return ProvisionedModel(facts=facts, downloaded=True, seconds=0.1)
        return None

    def record_use(self, kind: ModelType, file_name: str) -> None:
        pass


def test_registry_ids_and_default_weights() -> None:
    engine = StaticEngineLists(CATALOG)
    provider = RecordingProvider(engine)
    result = Preflight(engine, provider).resolve(
        job_of({"prompt": "a", "loras": [{"name": "boring-reality-v4"}]})
    )
    assert provider.provisioned == [("lora", "boring-reality-v4")]
    assert result.names.loras == (("boring_reality_primaryV4", 0.4),)
    assert result.downloaded == ["lora:boring_reality_primaryV4.safetensors"]


class ArchitectureProvider(RecordingProvider):
    """Knows the architectures of the catalog's checkpoints and LoRAs, as the registry would."""

    ARCH = {
        ("checkpoint", "Deliberate_v6.safetensors"): "sd15",
        ("checkpoint", "sdxl/jibMixIllustrious_v20.safetensors"): "sdxl",
        ("lora", "add-detail-xl"): "sdxl",
    }

    def describe(self, kind: ModelType, reference: str) -> ModelFacts | None:
        arch = self.ARCH.get((kind, reference))
        return ModelFacts(kind=kind, file_name=reference, architecture=arch) if arch else None  # type: ignore[arg-type]


def test_an_sdxl_lora_on_an_sd15_checkpoint_is_refused() -> None:
    engine = StaticEngineLists(CATALOG)
    job = job_of({"prompt": "a", "checkpoint": "deliberate_v6", "loras": [{"name": "add-detail-xl"}]})
    with pytest.raises(WorkerError) as caught:
        Preflight(engine, ArchitectureProvider(engine)).resolve(job)
    assert caught.value.code.value == "model_incompatible"
    assert (
        "add-detail-xl is for SDXL but checkpoint Deliberate_v6.safetensors is SD1.5" in caught.value.message
    )


def test_the_current_checkpoint_is_checked_too() -> None:
    engine = StaticEngineLists(CATALOG)  # current checkpoint: Deliberate (SD1.5)
    with pytest.raises(WorkerError, match="model_incompatible"):
        Preflight(engine, ArchitectureProvider(engine)).resolve(
            job_of({"prompt": "a <lora:add-detail-xl:1>"})
        )


def test_matching_architectures_pass() -> None:
    engine = StaticEngineLists(CATALOG)
    job = job_of({"prompt": "a", "checkpoint": "jibMixIllustrious_v20", "loras": [{"name": "add-detail-xl"}]})
    result = Preflight(engine, ArchitectureProvider(engine)).resolve(job)
    assert result.models["checkpoint"]["architecture"] == "sdxl"
    assert result.models["loras"][0]["architecture"] == "sdxl"


def test_prompt_tags_by_alias_are_accepted_and_reported() -> None:
    result = Preflight(StaticEngineLists(CATALOG)).resolve(job_of({"prompt": "a <lora:boringRealism:0.3>"}))
    assert result.models["loras"] == [
        {"name": "boring_reality_primaryV4", "weight": 0.3, "sha256": None, "architecture": None}
    ]
