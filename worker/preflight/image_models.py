"""What A1111 v1.10.1 does with an image job on each kind of checkpoint, said as warnings (never refused).

The registry reads a checkpoint's UNet input channels from its header (``worker.registry.detect``): 4 for a
plain UNet, 9 for an inpainting one (``sd-v1-5-inpainting`` style: latent, mask, masked image), 8 for
instruct-pix2pix. A1111 runs every combination (``modules/processing.py``, ``img2img_image_conditioning``):

* a mask on a plain checkpoint: the masked latents are blended back each step; no inpainting conditioning;
* an inpainting checkpoint without a mask: conditioned on a mask of ones (everything masked), so at the
  default ``inpainting_mask_weight`` of 1 the init image reaches it only through the init latents;
* ``image_cfg_scale`` is dropped unless the checkpoint is instruct-pix2pix (``cond_stage_key == "edit"``).
"""

from __future__ import annotations

from worker.image_jobs import Img2ImgJob
from worker.model_types import ModelFacts
from worker.schema import Txt2ImgJob

PLAIN, PIX2PIX, INPAINTING = 4, 8, 9


def checkpoint_warnings(job: Txt2ImgJob, checkpoint: ModelFacts | None) -> list[str]:
    """Warnings for an img2img job on this checkpoint (nothing when its channels are not known)."""
    channels = checkpoint.unet_in_channels if checkpoint is not None else None
    if channels is None or checkpoint is None or not isinstance(job, Img2ImgJob):
        return []
    name = checkpoint.file_name
    warnings = []
    if job.mask is not None and channels == PLAIN:
        warnings.append(
            f"{name} is not an inpainting checkpoint (4-channel UNet): A1111 inpaints by blending the "
            "latents outside the mask back each step; an inpainting checkpoint (9-channel UNet) fills the "
            "mask more coherently"
        )
    if job.mask is None and channels == INPAINTING:
        warnings.append(
            f"{name} is an inpainting checkpoint (9-channel UNet) and the job has no mask: A1111 "
            "conditions it as if everything were masked (at the default inpainting_mask_weight of 1 the init "
            "image reaches it only through the init latents)"
        )
    if job.image_cfg_scale is not None and channels != PIX2PIX:
        warnings.append(
            "image_cfg_scale only applies to an instruct-pix2pix checkpoint (8-channel UNet): A1111 "
            f"ignores it with {name}"
        )
    return warnings
