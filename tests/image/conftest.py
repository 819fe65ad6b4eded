"""The built image, run with podman (marker ``image``; docs/testing.md).

Never part of ``make test``: building the image takes tens of minutes (torch, A1111's requirements). Runs
with ``WORKER_IMAGE_TESTS=1`` (the offline build from ``A1111_SOURCES``, its layers reused) or
``WORKER_IMAGE=<tag>`` (an image already built); skipped with that reason otherwise, and where podman is absent.
The small A1111 test models are made at test time by the image's own A1111.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.podman import Container, ensure_image, make_tiny_models, skip_reason, start_recorder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = skip_reason()
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.image)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def image() -> str:
    return ensure_image()


@pytest.fixture(scope="session")
def tiny_models(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_models(image, tmp_path_factory.mktemp("volume") / "models")


@pytest.fixture(scope="module")
def recorder(image: str) -> Iterator[Container]:
    """The namespace a container under test joins: loopback only, with the recording proxy on it."""
    box = start_recorder(image, Path(__file__).parent / "proxy_recorder.py")
    try:
        yield box
    finally:
        box.remove()
