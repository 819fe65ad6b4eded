"""The layers of docs/architecture.md, checked by importing for real in a fresh interpreter.

Each check imports a set of modules in a new Python process and lists every module that got loaded; a
forbidden one fails the test with its name. Importing a set together is enough: if the union of what they
load holds no forbidden module, none of them does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: the job path: everything that runs a job, except the registry it reaches through ``ModelProvider``
JOB_PATH = (
    "worker.a1111",
    "worker.handler",
    "worker.health",
    "worker.model_jobs",
    "worker.output",
    "worker.preflight",
    "worker.progress_relay",
    "worker.routes",
    "worker.routes_server",
    "worker.schema",
    "worker.settings_baseline",
    "worker.startup",
    "worker.translate",
    "worker.verify",
)
HTTP_CLIENT = ("worker.a1111.client", "worker.a1111.transport", "requests", "urllib3", "tenacity")
TORCH = ("torch", "diffusers", "transformers")

_LOADER = """
import importlib, json, pkgutil, sys
wanted = json.loads(sys.argv[1])
names = []
for name in wanted:
    if name.endswith(".*"):
        package = importlib.import_module(name[:-2])
        names += [info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    else:
        names.append(name)
skip = set(json.loads(sys.argv[2]))
for name in names:
    if name not in skip:
        importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(modules: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """Every module loaded by importing ``modules`` (``pkg.*``: the package and all below it)."""
    result = subprocess.run(
        [sys.executable, "-c", _LOADER, json.dumps(modules), json.dumps(list(skip))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def offending(loaded: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [name for name in loaded if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_schema_and_translation_are_pure() -> None:
    """The job contract and its translation load no HTTP client, no output code and no registry."""
    loaded = loaded_by(
        [
            *("worker.schema", "worker.translate", "worker.a1111.endpoints", "worker.a1111.txt2img_fields"),
            *("worker.image_jobs", "worker.translate_img2img", "worker.a1111.img2img_fields"),
        ]
    )
    assert (
        offending(loaded, (*HTTP_CLIENT, "worker.output", "worker.registry", "worker.settings_baseline"))
        == []
    )


def test_the_job_path_sees_the_registry_only_through_model_provider() -> None:
    loaded = loaded_by(
        [
            f"{name}.*" if name in ("worker.a1111", "worker.output", "worker.preflight") else name
            for name in JOB_PATH
        ]
    )
    assert offending(loaded, ("worker.registry", "diffusers_server", *TORCH)) == []
    assert "worker.model_types" in loaded  # where ModelProvider lives


def test_the_worker_never_imports_the_embedded_engine_or_torch() -> None:
    loaded = loaded_by(["worker.*", "worker.__main__"])
    assert offending(loaded, ("diffusers_server", *TORCH)) == []


def test_the_registry_never_imports_the_job_path() -> None:
    loaded = loaded_by(["worker.registry.*"])
    assert offending(loaded, (*JOB_PATH, "diffusers_server", *TORCH)) == []


def test_the_extension_never_imports_the_worker() -> None:
    """It runs in A1111's own Python (pydantic 1), where the worker cannot be imported."""
    loaded = loaded_by(["a1111_worker_routes.*"])
    assert offending(loaded, ("worker",)) == []
    assert "a1111_worker_routes.report" in loaded


@pytest.mark.engine
def test_the_embedded_engine_uses_the_registry_but_never_the_job_path() -> None:
    pytest.importorskip("torch")
    loaded = loaded_by(["diffusers_server.*"], skip=("diffusers_server.__main__",))
    assert offending(loaded, JOB_PATH) == []
    assert "worker.registry.safetensors_header" in loaded  # the engine shares the registry's file rules


def test_the_embedded_engine_opens_its_port_before_torch_is_imported() -> None:
    """The server's app loads neither torch nor diffusers: the first model load does (docs/performance.md)."""
    pytest.importorskip("torch")
    assert offending(loaded_by(["diffusers_server.app"]), TORCH) == []
