"""Reference resolution (every form), nearest-name errors, path traversal, compatibility."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.registry.conftest import catalogue_doc
from tests.registry.fixtures import write_model
from worker.compatibility import check_compatible
from worker.errors import InputInvalid, ModelIncompatible, ModelNotFound
from worker.model_types import ModelFacts
from worker.registry.cli import main
from worker.registry.models import Catalogue

CATALOGUE = catalogue_doc(
    {
        "id": "deliberate-v6",
        "kind": "checkpoint",
        "file_name": "Deliberate_v6.safetensors",
        "architecture": "sd15",
        "aliases": ["deliberate"],
        "pinned": True,
        "source": {"type": "huggingface", "repo": "XpucT/Deliberate", "file": "Deliberate_v6.safetensors"},
    },
    {
        "id": "detail-tweaker-xl",
        "name": "Detail Tweaker XL",
        "kind": "lora",
        "default_weight": 1.5,
        "aliases": ["detail tweaker xl"],
        "trigger_words": ["detailed"],
    },
    {"id": "jib", "kind": "checkpoint", "source": {"type": "civitai", "model_id": 1590699}},
)


@pytest.fixture
def registry(models_dir, make_registry):
    write_model(models_dir, "checkpoint-sd15", "Deliberate_v6.safetensors")
    write_model(models_dir, "checkpoint-sdxl", "sub/XL_Base.safetensors")
    write_model(models_dir, "lora-sdxl", "Detail_Tweaker_XL.safetensors")
    write_model(models_dir, "lora-sd15", "kohya_out.safetensors", metadata={"ss_output_name": "MyStyle"})
    return make_registry(CATALOGUE)


@pytest.mark.parametrize(
    "ref",
    [
        "deliberate-v6",
        "DELIBERATE",
        "Deliberate_v6.safetensors",
        "deliberate_v6",
        "Deliberate_v6 [{short}]",
        "{short}",
        "{sha}",
    ],
)
def test_checkpoint_reference_forms(registry, ref):
    entry = next(e for e in registry.entries() if e.file_name == "Deliberate_v6.safetensors")
    facts = registry.describe("checkpoint", ref.format(short=entry.short_hash, sha=entry.sha256))
    assert facts is not None and facts.file_name == "Deliberate_v6.safetensors"
    assert facts.registry_id == "deliberate-v6" and facts.architecture == "sd15"
    assert facts.short_hash == entry.sha256[:10]


def test_subfolder_stem_and_lora_names(registry):
    assert registry.describe("checkpoint", "sub/XL_Base.safetensors").file_name == "sub/XL_Base.safetensors"
    assert registry.describe("checkpoint", "xl_base").architecture == "sdxl"
    lora = registry.describe("lora", "Detail Tweaker XL")  # catalogue alias linked by loose name
    assert lora.file_name == "Detail_Tweaker_XL.safetensors"
    assert lora.default_weight == 1.5 and lora.trigger_words == ("detailed",)
    assert registry.describe("lora", "mystyle").file_name == "kohya_out.safetensors"  # ss_output_name


def test_unknown_reference_names_nearest(registry, capsys):
    assert registry.describe("checkpoint", "Deliberat_v5") is None
    assert registry.provision("checkpoint", "Deliberat_v5") is None
    err = registry.not_found("checkpoint", "Deliberat_v5")
    assert isinstance(err, ModelNotFound)
    assert "'Deliberat_v5' not found" in err.message and "nearest: Deliberate_v6" in err.message
    assert main(["pull", "Deliberat_v5", "--kind", "checkpoint"], registry=registry) == 1
    assert "model_not_found: checkpoint 'Deliberat_v5' not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "ref", ["../checkpoints/Deliberate_v6.safetensors", "hf:a/b/../../etc/passwd.safetensors", "civitai:abc"]
)
def test_traversal_and_malformed_references_refused(registry, ref):
    with pytest.raises(InputInvalid):
        registry.provision("checkpoint", ref)


def test_catalogue_traversal_refused():
    with pytest.raises(ValueError, match="unsafe"):
        Catalogue.model_validate(
            catalogue_doc({"id": "x", "kind": "lora", "file_name": "../../x.safetensors"})
        )


def test_unusable_file_is_never_silent(models_dir, make_registry):
    path = write_model(models_dir, "checkpoint-sd15", "cut.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelIncompatible, match="truncated"):
        make_registry().describe("checkpoint", "cut")


def test_catalogue_entry_without_source(registry):
    (registry.models_dir / "loras" / "Detail_Tweaker_XL.safetensors").unlink()
    with pytest.raises(ModelNotFound, match="no download source"):
        registry.provision("lora", "detail-tweaker-xl")


def facts(kind, arch, name="m"):
    return ModelFacts(kind=kind, file_name=f"{name}.safetensors", architecture=arch)


def test_check_compatible():
    check_compatible(
        facts("checkpoint", "sdxl"), [facts("lora", "sdxl"), facts("lora", None), facts("vae", "unknown")]
    )
    check_compatible(facts("checkpoint", None), [facts("lora", "sd15")])
    with pytest.raises(ModelIncompatible) as err:
        check_compatible(facts("checkpoint", "sdxl", "base"), [facts("lora", "sd15", "old")])
    assert (
        "old.safetensors" in err.value.message
        and "SD1.5" in err.value.message
        and "SDXL" in err.value.message
    )
    with pytest.raises(ModelIncompatible, match="FLUX"):
        check_compatible(facts("checkpoint", "flux"), [])


def test_the_compatibility_check_loads_no_download_stack():
    """The job path imports ``check_compatible``; the downloader, locks and HTTP stack stay unloaded."""
    code = (
        "import sys, worker.compatibility\n"
        "print([m for m in ('requests', 'filelock', 'tenacity', 'worker.registry.registry') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
