"""Error shapes: FastAPI's 422 for bad types, A1111's {error, detail, body, errors} for our refusals."""

from __future__ import annotations

import httpx
import pytest

from tests.engine.conftest import SMALL


def _a1111_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    for needle in needles:
        assert needle in body["detail"]


def test_bad_type_is_fastapi_422(client: httpx.Client) -> None:
    response = client.post("/txt2img", json={**SMALL, "steps": "abc"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "steps"]


def test_unknown_fields_are_ignored_like_a1111(client: httpx.Client) -> None:
    response = client.post("/txt2img", json={**SMALL, "no_such_field": 1, "seed": 1})
    assert response.status_code == 200


def test_unknown_sampler_names_choices(client: httpx.Client) -> None:
    _a1111_error(
        client.post("/txt2img", json={**SMALL, "sampler_name": "k_euler_a"}), 404, "k_euler_a", "Euler a"
    )


def test_unknown_scheduler(client: httpx.Client) -> None:
    _a1111_error(client.post("/txt2img", json={**SMALL, "scheduler": "wiggly"}), 404, "wiggly", "Karras")


def test_unknown_lora_names_it(client: httpx.Client) -> None:
    response = client.post("/txt2img", json={**SMALL, "prompt": "x <lora:nope:0.5>"})
    _a1111_error(response, 404, "'nope'", "demo-lora-tiny")


def test_unknown_checkpoint_override_is_refused(client: httpx.Client) -> None:
    response = client.post(
        "/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "missing"}}
    )
    _a1111_error(response, 404, "'missing'", "demo-sd15-tiny.safetensors [")


def test_unknown_option_key(client: httpx.Client) -> None:
    _a1111_error(client.post("/options", json={"not_an_option": 1}), 400, "not_an_option")


@pytest.mark.parametrize(
    ("field", "value"),
    [("restore_faces", True), ("styles", ["x"])],
)
def test_unsupported_fields_that_change_the_image_are_refused(
    client: httpx.Client, field: str, value: object
) -> None:
    response = client.post("/txt2img", json={**SMALL, field: value})
    _a1111_error(response, 400, field)


def test_script_name_like_a1111(client: httpx.Client) -> None:
    _a1111_error(
        client.post("/txt2img", json={**SMALL, "script_name": "x/y/z plot"}), 422, "Script 'x/y/z plot'"
    )


def test_bad_size(client: httpx.Client) -> None:
    _a1111_error(client.post("/txt2img", json={**SMALL, "width": 70}), 400, "width")


@pytest.mark.parametrize(
    ("option", "value"),
    [("sigma_max", ":"), ("eta_noise_seed_delta", 1.5), ("tiling", 1), ("s_noise", "1.0")],
)
def test_option_of_the_wrong_type_is_400_naming_it(client: httpx.Client, option: str, value: object) -> None:
    """Found by the engine fuzz test: a string where a number goes crashed sampling with a 500."""
    response = client.post("/txt2img", json={**SMALL, "override_settings": {option: value}})
    _a1111_error(response, 400, option)


def test_unreadable_emphasis_weight_is_a_400_naming_it(client: httpx.Client) -> None:
    """A1111 answers 500 (ValueError) for ``(word:1.2.3)``; this engine names the weight."""
    response = client.post("/txt2img", json={**SMALL, "prompt": "a (word:1.2.3)"})
    _a1111_error(response, 400, "'1.2.3'")
