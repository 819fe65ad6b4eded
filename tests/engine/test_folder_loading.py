"""diffusers pipeline folders streamed into the engine's components: every layout diffusers writes, weights
bit-exact, and a folder missing weights refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_server.errors import ModelLoadError
from diffusers_server.models.pipelines import Runtime, load_pipeline_folder
from tests.support.training_outputs import tiny_pipeline

CPU = Runtime("cpu", torch.float32, False)


def _same_weights(expected: torch.nn.Module, loaded: torch.nn.Module) -> bool:
    loaded_state = loaded.state_dict()
    return all(torch.equal(value, loaded_state[key]) for key, value in expected.state_dict().items())


@pytest.mark.parametrize(
    "save_options",
    [{}, {"max_shard_size": "200KB"}, {"variant": "fp16"}],
    ids=["plain", "sharded", "fp16-variant"],
)
def test_a_folder_loads_its_own_weights(save_options: dict[str, str], tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd15", tmp_path / "tok", seed=3)
    if save_options.get("variant") == "fp16":
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(tmp_path / "finetune", **save_options)
    if "max_shard_size" in save_options:
        assert list((tmp_path / "finetune" / "unet").glob("*.index.json")), "the UNet was not sharded"

    loaded = load_pipeline_folder(tmp_path / "finetune", CPU, tmp_path / "skeletons", None).pipe

    for name in ("unet", "vae", "text_encoder"):
        original = getattr(pipe, name).to(torch.float32)
        assert _same_weights(original, getattr(loaded, name)), name
        assert all(p.dtype == torch.float32 for p in getattr(loaded, name).parameters()), name


def test_a_folder_missing_weights_is_refused_naming_them(tmp_path: Path) -> None:
    tiny_pipeline("sd15", tmp_path / "tok", seed=3).save_pretrained(tmp_path / "finetune")
    unet_file = tmp_path / "finetune" / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(unet_file)
    dropped = next(key for key in weights if key.startswith("conv_in."))
    del weights[dropped]
    save_file(weights, unet_file)

    with pytest.raises(ModelLoadError, match=rf"finetune/unet.*incomplete.*{dropped}"):
        load_pipeline_folder(tmp_path / "finetune", CPU, tmp_path / "skeletons", None)
