"""A job's input images, checked (URLs fetched) before pre-flight: nothing is generated from a bad one.

Each image is checked by ``worker.input_images.check`` and replaced in the job by the base64 that goes to the
engine (the same text, less any data-URI prefix; a fetched URL's bytes, encoded). A mask is checked against
each init image the way A1111 v1.10.1 will use it (``StableDiffusionProcessingImg2Img.init``):

* the same size: nothing to say;
* "only masked" (``inpaint_full_res``, A1111's API default): the crop is found in the mask's pixels and cut
  from the init image's pixels, so a mask of another size would inpaint the wrong place: refused;
* otherwise both are resized to ``width`` x ``height`` by ``resize_mode``: with the same aspect ratio (or
  ``resize_mode`` 0, which stretches both alike) they stay aligned (a warning says the mask is resized);
  with another aspect ratio, cropping or filling moves one against the other: refused.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from worker.input_images.check import CheckedImage, ImageLimits, check_image, check_image_bytes
from worker.input_images.fetch import ImageFetcher, UrlPolicy, is_url
from worker.input_images.refusal import refuse

if TYPE_CHECKING:
    from worker.image_jobs import ImageToolRequest, Img2ImgJob
    from worker.settings import WorkerSettings

_ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class ImagePolicy:
    limits: ImageLimits
    urls: UrlPolicy

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> ImagePolicy:
        return cls(
            limits=ImageLimits(max_bytes=settings.image_max_bytes, max_pixels=settings.image_max_pixels),
            urls=UrlPolicy(
                allowed=settings.allow_image_urls,
                allowed_hosts=settings.download_allowed_hosts,
                max_bytes=settings.image_max_bytes,
                timeout_s=settings.image_url_timeout_s,
            ),
        )


class InputImages:
    """Reads one job's images under one policy."""

    def __init__(self, policy: ImagePolicy, fetcher: ImageFetcher | None = None) -> None:
        self.policy = policy
        self._fetcher = fetcher or ImageFetcher(policy.urls)

    def read(self, text: Any, where: str) -> CheckedImage:
        if not isinstance(text, str):
            raise refuse(
                where, f"an image must be a base64 string or an https URL, got {type(text).__name__}"
            )
        if not is_url(text):
            return check_image(text, where, self.policy.limits)
        raw = self._fetcher.fetch(text, where)
        fmt, mode, width, height, orientation = check_image_bytes(raw, where, self.policy.limits)
        return CheckedImage(
            where=where,
            base64=base64.b64encode(raw).decode("ascii"),
            format=fmt,
            mode=mode,
            width=width,
            height=height,
            byte_count=len(raw),
            orientation=orientation,
        )

    def img2img(self, job: Img2ImgJob) -> tuple[Img2ImgJob, list[str]]:
        """The job with its images as checked base64, and warnings (a resized mask)."""
        inits = [self.read(text, f"init_images[{i}]") for i, text in enumerate(job.init_images)]
        update: dict[str, Any] = {"init_images": [image.base64 for image in inits]}
        warnings: list[str] = []
        if job.mask is not None:
            mask = self.read(job.mask, "mask")
            update["mask"] = mask.base64
            for init in inits:
                warnings += mask_fits(init, mask, job)
        return job.model_copy(update=update), warnings[:1]

    def tool(self, request: ImageToolRequest) -> ImageToolRequest:
        """The request with each image (``image`` or ``imageList[i].data``) as checked base64."""
        body = dict(request.body)
        if "imageList" in body:
            body["imageList"] = [
                {**item, "data": self.read(item["data"], f"imageList[{i}].data").base64}
                for i, item in enumerate(body["imageList"])
            ]
        else:
            body["image"] = self.read(body["image"], "image").base64
        return replace(request, body=body)


def mask_fits(init: CheckedImage, mask: CheckedImage, job: Img2ImgJob) -> list[str]:
    """A warning when A1111 resizes the mask to line up; ``InputInvalid`` when it would not line up."""
    if mask.size == init.size:
        return []
    sizes = f"mask is {mask.width}x{mask.height}, {init.where} is {init.width}x{init.height}"
    if job.inpaint_full_res is not False:
        raise refuse(
            "mask",
            f'{sizes}: with inpaint_full_res ("only masked", A1111\'s default) A1111 finds the area in the '
            "mask's pixels and cuts it from the image's, so it would inpaint the wrong place; send a mask "
            "of the image's size",
        )
    same_shape = abs(mask.width * init.height - init.width * mask.height) <= _ASPECT_TOLERANCE * (
        init.width * mask.height
    )
    if not same_shape and (job.resize_mode or 0) != 0:
        raise refuse(
            "mask",
            f"{sizes}: another aspect ratio, and resize_mode {job.resize_mode} crops or fills each to "
            "its own shape, so the mask would not line up with the image; send a mask of the image's size",
        )
    return [f"{sizes}: A1111 resizes both to {job.width or 512}x{job.height or 512}, where they line up"]
