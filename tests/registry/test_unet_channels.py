"""The registry reads a checkpoint's UNet input channels from its header: inpainting (9) and instruct-pix2pix (8)
checkpoints are told from plain ones (4) without loading anything, and the job path sees it in ``ModelFacts``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.registry.fixtures import SPECS
from worker.registry.detect import UNET_CONV_IN
from worker.registry.models import Catalogue
from worker.registry.registry import ModelRegistry


@pytest.mark.parametrize(("channels", "expected"), [(4, 4), (9, 9), (8, 8), (None, None)])
def test_unet_in_channels_reach_the_job_path(
    tmp_path: Path, channels: int | None, expected: int | None
) -> None:
    tensors = {name: np.zeros(shape, np.float16) for name, shape in SPECS["checkpoint-sd15"].items()}
    if channels is not None:
        tensors[UNET_CONV_IN] = np.zeros((8, channels, 3, 3), np.float16)
    (tmp_path / "checkpoints").mkdir(parents=True)
    save_file(tensors, str(tmp_path / "checkpoints" / "model.safetensors"))
    registry = ModelRegistry(
        models_dir=tmp_path, registry_path=tmp_path / "registry.json", catalogue=Catalogue(), allowed_hosts=()
    )
    registry.warm()
    facts = registry.describe("checkpoint", "model")
    assert facts is not None and facts.architecture == "sd15"
    assert facts.unet_in_channels == expected
