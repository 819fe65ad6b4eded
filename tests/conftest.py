"""Shared pytest plugins (each support module owns its fixtures) and the engine suites' marker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.fake_a1111",
    "tests.support.embedded_engine",
    "tests.support.s3_server",
]

TESTS = Path(__file__).resolve().parent
#: suites of the embedded engine: every test in them is marked ``engine``, and they import torch at once
ENGINE_SUITES = ("engine/*", "fuzz/test_engine_properties.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None

# Without torch (a worker-only install: pip install -e '.[dev]') the engine suites cannot even be imported;
# they are not collected, which is what `-m "not engine"` asks for anyway (the header says so).
collect_ignore_glob = [] if HAS_TORCH else list(ENGINE_SUITES)


def pytest_report_header() -> str | None:
    if HAS_TORCH:
        return None
    return f"torch is not installed: {', '.join('tests/' + s for s in ENGINE_SUITES)} not collected"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = item.path.relative_to(TESTS).as_posix()
        if any(Path(relative).match(suite) for suite in ENGINE_SUITES):
            item.add_marker(pytest.mark.engine)
