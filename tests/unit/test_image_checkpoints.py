"""Image jobs on each kind of checkpoint: what A1111 does, said as warnings (worker/preflight/image_models.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fixtures import StaticEngineLists, engine_catalog
from worker.image_jobs import parse_any_job
from worker.model_types import ModelFacts, ModelType, ProvisionedModel
from worker.preflight.resolver import Preflight


class ChannelsProvider:
    """A registry stand-in that knows the catalog checkpoint's UNet input channels."""

    def __init__(self, channels: int | None) -> None:
        self.channels = channels

    def describe(self, kind: ModelType, reference: str) -> ModelFacts | None:
        if kind != "checkpoint":
            return None
        return ModelFacts(kind=kind, file_name=reference, architecture="sd15", unet_in_channels=self.channels)

    def provision(self, kind: ModelType, reference: str) -> ProvisionedModel | None:
        return None

    def record_use(self, kind: ModelType, file_name: str) -> None:
        pass


def warnings_for(job: dict[str, Any], channels: int | None) -> list[str]:
    request = parse_any_job(job, max_images=8)
    engine = StaticEngineLists(engine_catalog())
    return Preflight(engine, ChannelsProvider(channels)).resolve(request.job).warnings  # type: ignore[union-attr]


IMG2IMG = {"prompt": "a", "init_images": ["x"], "checkpoint": "Deliberate_v6"}


@pytest.mark.parametrize(
    ("job", "channels", "expected"),
    [
        ({**IMG2IMG, "mask": "m"}, 4, "is not an inpainting checkpoint (4-channel UNet)"),
        ({**IMG2IMG, "mask": "m"}, 9, None),
        (IMG2IMG, 9, "is an inpainting checkpoint (9-channel UNet) and the job has no mask"),
        (IMG2IMG, 4, None),
        ({**IMG2IMG, "image_cfg_scale": 1.5}, 4, "image_cfg_scale only applies to an instruct-pix2pix"),
        ({**IMG2IMG, "image_cfg_scale": 1.5}, 8, None),
        ({**IMG2IMG, "mask": "m", "image_cfg_scale": 1.5}, None, None),  # channels not known: nothing said
        ({"prompt": "a", "checkpoint": "Deliberate_v6"}, 9, None),  # txt2img: A1111 runs it as usual
    ],
)
def test_checkpoint_warnings(job: dict[str, Any], channels: int | None, expected: str | None) -> None:
    warnings = warnings_for(job, channels)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0]
        assert "Deliberate_v6.safetensors" in warnings[0]
