"""docs/api.md's examples are the test fixtures: each JSON block marked with a fixture must equal it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.fixtures import FIXTURES, StaticEngineLists, engine_catalog, job_fixture, load_json
from worker.errors import WorkerError
from worker.preflight.resolver import Preflight
from worker.schema import GenerationRequest, parse_job_input

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
MARKED_BLOCK = re.compile(r"<!-- fixture: (?P<name>[\w/.-]+) -->\s*```json\n(?P<body>.*?)```", re.DOTALL)


def marked_blocks() -> list[tuple[str, str]]:
    return [(m.group("name"), m.group("body")) for m in MARKED_BLOCK.finditer(API_DOC.read_text("utf-8"))]


@pytest.mark.parametrize(("name", "body"), marked_blocks())
def test_doc_example_equals_its_fixture(name: str, body: str) -> None:
    assert json.loads(body) == json.loads((FIXTURES / name).read_text("utf-8"))


def test_every_job_fixture_is_in_the_docs() -> None:
    documented = {name for name, _ in marked_blocks()}
    jobs = {f"jobs/{p.name}" for p in (FIXTURES / "jobs").glob("*.json")}
    assert jobs <= documented, f"undocumented fixtures: {sorted(jobs - documented)}"


@pytest.mark.parametrize("name", sorted(load_json("expected_errors.json")))
def test_documented_errors_are_what_the_worker_says(name: str) -> None:
    expected = load_json("expected_errors.json")[name]
    with pytest.raises(WorkerError) as caught:
        request = parse_job_input(job_fixture(name)["input"], max_images=8)
        assert isinstance(request, GenerationRequest)
        Preflight(StaticEngineLists(engine_catalog())).resolve(request.job)
    assert caught.value.code.value == expected["code"]
    assert expected["message"] in caught.value.message
    assert f"`{expected['code']}`" in API_DOC.read_text("utf-8")
