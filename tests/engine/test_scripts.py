"""The embedded engine runs no A1111 scripts: it lists none and refuses every ``alwayson_scripts`` entry the way
A1111 refuses a script it does not have, so the worker's pre-flight refuses such a job before generating."""

from __future__ import annotations

import httpx
import pytest

from tests.engine.conftest import SMALL
from worker.a1111.extensions import parse_extension_catalog


def test_lists_no_scripts(client: httpx.Client) -> None:
    scripts = client.get("/scripts").json()
    assert scripts == {"txt2img": [], "img2img": []}
    catalog = parse_extension_catalog(lambda route: client.get(route).json() if route == "scripts" else None)
    assert catalog.script_names("txt2img") == () and catalog.controlnet_models is None


@pytest.mark.parametrize("script", ["controlnet", "ADetailer", "reactor"])
def test_refuses_every_alwayson_script_like_a1111(client: httpx.Client, script: str) -> None:
    response = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {script: {"args": []}}})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"Script '{script}' not found"
