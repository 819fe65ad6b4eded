"""Build random-weight models for A1111's extras and interrogation, locally and deterministically (no
download).

Run it with the Python of the A1111 install (it has torch and spandrel; the DeepBooru model class is imported
from A1111's own ``modules/deepbooru_model.py``, never copied)::

    python scripts/a1111_tool_models.py DEST --webui A1111_DIR

writes

* ``DEST/upscalers/tiny_esrgan.pth``: a 4x ESRGAN (spandrel's ``RRDBNet``, the original ESRGAN key layout),
  8 filters and one block instead of 64 and 23 (~100 KB): A1111 lists it by its stem and loads it through
  spandrel as any ESRGAN.
* ``DEST/torch_deepdanbooru/model-resnet_custom_v3.pt``: A1111's ``DeepDanbooruModel`` with seeded random
  weights in fp16 and a made-up tag list; its last convolution is set so that the tags ``lighthouse``
  and ``ocean_view`` always score above 0.5 and ``not_this_one`` below (its input is a ReLU's, never
  negative), so A1111 answers the caption ``lighthouse, ocean view`` (by default it sorts the tags and
  writes spaces).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger("a1111_tool_models")

#: the tags the random DeepBooru model knows, and which of them it always finds
TAGS = ("lighthouse", "ocean_view", "not_this_one", "rating:safe")
FOUND = ("lighthouse", "ocean_view", "rating:safe")
ESRGAN_FILE = "upscalers/tiny_esrgan.pth"
DEEPBOORU_FILE = "torch_deepdanbooru/model-resnet_custom_v3.pt"


def build_esrgan(dest: Path) -> Path:
    from spandrel.architectures.ESRGAN import RRDBNet

    torch.manual_seed(0)
    model = RRDBNet(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    path = dest / ESRGAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def build_deepbooru(dest: Path, webui: Path) -> Path:
    sys.path.insert(0, str(webui))
    sys.argv = sys.argv[:1]  # importing A1111's modules parses its command line
    from modules.deepbooru_model import DeepDanbooruModel

    torch.manual_seed(0)
    model = DeepDanbooruModel()
    state = {name: tensor.half() for name, tensor in model.state_dict().items()}
    last = state["n_Conv_178.weight"]
    last.zero_()
    for index, tag in enumerate(TAGS):
        last[index].fill_(0.01 if tag in FOUND else -0.01)
    path = dest / DEEPBOORU_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "tags": list(TAGS)}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--webui", type=Path, required=True, help="the A1111 checkout (its DeepBooru class)")
    args = parser.parse_args(argv)
    for path in (build_esrgan(args.dest), build_deepbooru(args.dest, args.webui)):
        log.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
