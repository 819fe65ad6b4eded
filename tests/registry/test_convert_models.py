"""The converters end to end on tiny models written by diffusers, peft and accelerate themselves.

A converted checkpoint must hold bit-identical weights (diffusers loads it back), and a converted LoRA
must reproduce the training run's own output (the pipeline with the adapters still in memory).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from diffusers_server.models.pipelines import Runtime, load_checkpoint  # noqa: E402
from tests.support.training_outputs import (  # noqa: E402
    TrainedLora,
    render,
    save_accelerate_checkpoint,
    save_diffusers_lora,
    text_encoders,
    tiny_pipeline,
    train_lora,
)
from worker.registry.conversions import ConversionFailed  # noqa: E402
from worker.registry.convert import checkpoint_from_diffusers, diffusers_from_checkpoint, kohya_from_lora  # noqa: E402
from worker.registry.layouts import inspect_diffusers_folder, inspect_training_folder, lora_facts  # noqa: E402
from worker.registry.safetensors_header import read_header  # noqa: E402

pytestmark = pytest.mark.engine
CPU = Runtime("cpu", torch.float32, False)


def _components(pipe: object) -> dict[str, torch.nn.Module]:
    names = ["unet", "vae", *text_encoders(pipe)]  # type: ignore[arg-type]
    return {name: getattr(pipe, name) for name in names}


def assert_same_weights(a: object, b: object) -> None:
    for name, module in _components(a).items():
        left, right = module.state_dict(), getattr(b, name).state_dict()
        assert set(left) == set(right), name
        different = [k for k in left if not torch.equal(left[k], right[k])]
        assert not different, f"{name}: {different[:3]}"


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_pipeline_folder_to_single_file_and_back(kind: str, tmp_path: Path) -> None:
    pipe = tiny_pipeline(kind, tmp_path / "tok")  # type: ignore[arg-type]
    pipe.save_pretrained(tmp_path / "trained")
    folder = inspect_diffusers_folder(tmp_path / "trained")
    assert (folder.architecture, folder.precision, folder.has_tokenizer) == (kind, "fp32", True)

    single = tmp_path / "trained.safetensors"
    summary = checkpoint_from_diffusers(folder, single)
    assert summary.bytes_written == single.stat().st_size
    loaded = load_checkpoint(single, CPU, tmp_path / "skeletons", None)  # what the embedded engine does
    assert loaded.kind == kind
    assert_same_weights(pipe, loaded.pipe)

    back = tmp_path / "back"
    diffusers_from_checkpoint(single, back)
    cls = StableDiffusionPipeline if kind == "sd15" else StableDiffusionXLPipeline
    extra = (
        {"tokenizer": pipe.tokenizer}
        if kind == "sd15"
        else {"tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer}
    )
    if kind == "sd15":
        extra |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    reloaded = cls.from_pretrained(back, local_files_only=True, **extra)
    assert_same_weights(pipe, reloaded)
    assert inspect_diffusers_folder(back).architecture == kind


def test_bf16_weights_stay_bit_exact_and_half_casts_them(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd15", tmp_path / "tok").to(torch.bfloat16)
    pipe.save_pretrained(tmp_path / "bf16")
    folder = inspect_diffusers_folder(tmp_path / "bf16")
    assert folder.precision == "bf16"
    checkpoint_from_diffusers(folder, tmp_path / "bf16.safetensors")
    checkpoint_from_diffusers(folder, tmp_path / "fp16.safetensors", half=True)
    exact = load_file(str(tmp_path / "bf16.safetensors"))
    half = load_file(str(tmp_path / "fp16.safetensors"))
    source = pipe.unet.state_dict()["down_blocks.1.attentions.0.proj_in.weight"]
    name = "model.diffusion_model.input_blocks.3.1.proj_in.weight"
    assert exact[name].dtype == torch.bfloat16 and torch.equal(exact[name], source)
    assert half[name].dtype == torch.float16 and torch.equal(half[name], source.to(torch.float16))


def _widths(pipe: object) -> dict[str, int]:
    return {name: int(m.config.hidden_size) for name, m in text_encoders(pipe).items()}  # type: ignore[arg-type]


def _kohya_render(trained: TrainedLora, kohya: Path) -> np.ndarray:
    trained.base.load_lora_weights(str(kohya), adapter_name="converted")
    try:
        return render(trained.base)
    finally:
        trained.base.delete_adapters(["converted"])


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize(("old_format", "metadata"), [(False, True), (True, True), (True, False)])
def test_diffusers_lora_to_kohya_reproduces_the_training_run(
    kind: str, old_format: bool, metadata: bool, tmp_path: Path
) -> None:
    # without recorded settings, one alpha for every module is all --alpha can give: train the UNet only
    trained = train_lora(tiny_pipeline(kind, tmp_path / "tok"), text=metadata)  # type: ignore[arg-type]
    expected = render(trained.trained)
    assert np.abs(expected - render(trained.base)).max() > 0.05  # the LoRA does change the image
    source = save_diffusers_lora(trained, tmp_path / "lora", old_format=old_format, metadata=metadata)
    facts = lora_facts(read_header(source).tensors)
    assert facts is not None and (facts.layout, facts.rank) == ("diffusers", 4)
    assert facts.usable_by == ("embedded",)

    kohya = tmp_path / "kohya.safetensors"
    # without recorded settings the run's alpha must be given
    summary = kohya_from_lora(
        [source],
        kohya,
        unet_config=dict(trained.base.unet.config),
        text_widths=_widths(trained.base),  # type: ignore[arg-type]
        alpha=None if metadata else 8,
    )
    header = read_header(kohya)
    assert all(k.startswith(("lora_unet_", "lora_te")) for k in header.tensors)
    assert summary.facts["architecture"] == kind
    assert lora_facts(header.tensors).usable_by == ("a1111", "embedded")  # type: ignore[union-attr]
    np.testing.assert_allclose(_kohya_render(trained, kohya), expected, atol=2e-5)


def test_rslora_scaling_is_carried_into_kohya_alpha(tmp_path: Path) -> None:
    trained = train_lora(tiny_pipeline("sd15", tmp_path / "tok"), text=False, use_rslora=True)
    source = save_diffusers_lora(trained, tmp_path / "lora", old_format=False, metadata=True)
    kohya = tmp_path / "kohya.safetensors"
    kohya_from_lora([source], kohya, unet_config=dict(trained.base.unet.config))
    alpha = load_file(str(kohya))["lora_unet_down_blocks_1_attentions_0_proj_in.alpha"]
    assert float(alpha) == pytest.approx(8 * 2.0)  # alpha * sqrt(rank 4)
    np.testing.assert_allclose(_kohya_render(trained, kohya), render(trained.trained), atol=2e-5)


def test_accelerate_checkpoint_folder_to_kohya(tmp_path: Path) -> None:
    trained = train_lora(tiny_pipeline("sd15", tmp_path / "tok"), text=False)
    expected = render(trained.trained)
    folder = save_accelerate_checkpoint(trained, tmp_path / "run" / "checkpoint-500")
    (tmp_path / "run" / "README.md").write_text("---\nbase_model: runwayml/stable-diffusion-v1-5\n---\n")
    training = inspect_training_folder(folder)
    assert (training.step, training.optimizer, training.base_model) == (
        500,
        True,
        "runwayml/stable-diffusion-v1-5",
    )
    assert [p.name for p in training.lora_files] == ["model.safetensors"]
    facts = lora_facts(read_header(training.lora_files[0]).tensors)
    assert facts is not None and (facts.layout, facts.base_weights, facts.rank) == ("peft", True, 4)
    assert facts.usable_by == ("embedded",)

    kohya = tmp_path / "kohya.safetensors"
    summary = kohya_from_lora(training.lora_files, kohya, unet_config=dict(trained.base.unet.config), alpha=8)
    assert summary.facts["modules"] == facts.modules
    assert all(".base_layer" not in k for k in read_header(kohya).tensors)
    np.testing.assert_allclose(_kohya_render(trained, kohya), expected, atol=2e-5)
    default = kohya_from_lora(
        training.lora_files, tmp_path / "default.safetensors", unet_config=dict(trained.base.unet.config)
    )
    assert default.notes == ["no lora_alpha recorded: alpha = rank (scale 1.0), as diffusers assumes"]
    alphas = {
        float(v) for k, v in load_file(str(tmp_path / "default.safetensors")).items() if k.endswith(".alpha")
    }
    assert alphas == {4.0}


def test_what_cannot_be_converted_is_refused_with_the_reason(tmp_path: Path) -> None:
    trained = train_lora(tiny_pipeline("sd15", tmp_path / "tok"), text=False)
    source = save_diffusers_lora(trained, tmp_path / "lora", old_format=False, metadata=True)
    with pytest.raises(ConversionFailed, match="unknown base model: cross-attention width \\[32\\]"):
        kohya_from_lora([source], tmp_path / "x.safetensors")  # neither SD1.5's nor SDXL's width
    from diffusers_server.demo_models import TINY_CONFIGS

    with pytest.raises(ConversionFailed, match="trained for another base model"):
        kohya_from_lora([source], tmp_path / "x.safetensors", unet_config=TINY_CONFIGS["sdxl"]["unet"])
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(source.read_bytes()[:-64])
    with pytest.raises(ConversionFailed, match="truncated"):
        kohya_from_lora([truncated], tmp_path / "y.safetensors", unet_config=dict(trained.base.unet.config))

    dora = train_lora(tiny_pipeline("sd15", tmp_path / "tok2"), text=False)
    from peft import LoraConfig

    dora.trained.unet.add_adapter(
        LoraConfig(r=2, target_modules=["proj_in"], use_dora=True), adapter_name="dora"
    )
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(dora.trained.unet, adapter_name="dora")
    StableDiffusionPipeline.save_lora_weights(str(tmp_path / "dora"), unet_lora_layers=state)
    with pytest.raises(ConversionFailed, match="DoRA"):
        kohya_from_lora([tmp_path / "dora" / "pytorch_lora_weights.safetensors"], tmp_path / "z.safetensors")

    pipe = tiny_pipeline("sd15", tmp_path / "tok3")
    pipe.save_pretrained(tmp_path / "folder")
    checkpoint_from_diffusers(inspect_diffusers_folder(tmp_path / "folder"), tmp_path / "tiny.safetensors")
    from safetensors.torch import save_file

    tensors = load_file(str(tmp_path / "tiny.safetensors"))
    save_file(tensors, str(tmp_path / "no-configs.safetensors"))  # the configs metadata is gone
    with pytest.raises(ConversionFailed, match="Unknown base model"):
        diffusers_from_checkpoint(tmp_path / "no-configs.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    sd2 = {
        k.replace("cond_stage_model.transformer.", "cond_stage_model.model."): v for k, v in tensors.items()
    }
    save_file(sd2, str(tmp_path / "sd2.safetensors"))
    with pytest.raises(ConversionFailed, match="SD2"):
        diffusers_from_checkpoint(tmp_path / "sd2.safetensors", tmp_path / "out2")
    assert json.loads(read_header(tmp_path / "tiny.safetensors").metadata["diffusers_server.configs"])["unet"]
