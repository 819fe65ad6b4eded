"""start.sh and the image's optional extensions (ControlNet, ADetailer): linked where A1111 loads extensions
unless ``A1111_DISABLED_EXTENSIONS`` names them, their flags passed only when they load (docs/extensions.md).

Fake extension folders stand in for the real ones (A1111 only looks at the folder names here); the real
extensions in the built image are checked by tests/image/test_extensions.py.
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.deploy.test_start_sh import START, env_for, print_command
from worker.preflight.controlnet_annotators import ANNOTATORS_FOLDER

FOLDERS = {"controlnet": "sd-webui-controlnet", "adetailer": "adetailer"}


@pytest.fixture
def image_like(tmp_path: Path) -> dict[str, str]:
    """A fake A1111 and an optional-extensions folder holding both, as the image lays them out."""
    a1111 = tmp_path / "a1111"
    a1111.mkdir()
    (a1111 / "launch.py").write_text("raise SystemExit('not a real A1111')\n")
    optional = tmp_path / "optional-extensions"
    for folder in FOLDERS.values():
        (optional / folder).mkdir(parents=True)
    return {"A1111_DIR": str(a1111), "A1111_OPTIONAL_EXTENSIONS_DIR": str(optional)}


def engine_args(tmp_path: Path, **env: str) -> list[str]:
    result = print_command(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


@pytest.mark.parametrize(
    ("disabled", "controlnet", "adetailer"),
    [
        ("", True, True),
        ("controlnet", False, True),
        (" adetailer ", True, False),
        ("adetailer,controlnet", False, False),
    ],
)
def test_flags_follow_the_extensions_that_load(
    tmp_path: Path, image_like: dict[str, str], disabled: str, controlnet: bool, adetailer: bool
) -> None:
    args = engine_args(tmp_path, **image_like, A1111_DISABLED_EXTENSIONS=disabled)
    pairs = dict(itertools.pairwise(args))
    assert ("--controlnet-dir" in args) is controlnet
    assert ("--controlnet-annotator-models-path" in args) is controlnet
    if controlnet:
        assert pairs["--controlnet-dir"] == f"{tmp_path / 'models'}/ControlNet"
        # the folder pre-flight checks the preprocessors' weights in, outside the one ControlNet lists
        annotators = pairs["--controlnet-annotator-models-path"]
        assert annotators == f"{tmp_path / 'models'}/{ANNOTATORS_FOLDER}" != pairs["--controlnet-dir"]
    assert ("--ad-no-huggingface" in args) is adetailer


def test_without_the_extensions_no_flag_is_passed(tmp_path: Path, image_like: dict[str, str]) -> None:
    """A1111 refuses a flag no loaded extension declares: an image built without them must not pass any."""
    args = engine_args(tmp_path, A1111_DIR=image_like["A1111_DIR"])
    assert "--controlnet-dir" not in args and "--ad-no-huggingface" not in args
    assert "--controlnet-annotator-models-path" not in args


def test_an_unknown_name_is_refused_with_the_choices(tmp_path: Path, image_like: dict[str, str]) -> None:
    refused = print_command(tmp_path, **image_like, A1111_DISABLED_EXTENSIONS="controlnet,reactor")
    assert refused.returncode != 0
    assert "no extension 'reactor'; use a comma-separated list of: controlnet, adetailer" in refused.stderr


def test_an_extension_start_sh_cannot_leave_out_is_refused(
    tmp_path: Path, image_like: dict[str, str]
) -> None:
    """A folder of its own in A1111's extensions folder (not a link start.sh made) would load anyway."""
    (tmp_path / "a1111-data" / "extensions" / "adetailer").mkdir(parents=True)
    refused = print_command(tmp_path, **image_like, A1111_DISABLED_EXTENSIONS="adetailer")
    assert refused.returncode != 0 and "is a folder of its own" in refused.stderr, refused.stderr


def start_once(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """start.sh up to the engine's first exit (the fake A1111 exits at once; no restart)."""
    return subprocess.run(
        [START],
        env=env_for(
            tmp_path,
            **env,
            WORKER_ENGINE="a1111",
            WORKER_SKIP_GPU_CHECK="1",
            WORKER_ENGINE_MAX_RESTARTS="0",
            WORKER_STOP_TIMEOUT_S="5",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_start_links_the_loaded_ones_and_unlinks_the_disabled_ones(
    tmp_path: Path, image_like: dict[str, str]
) -> None:
    extensions = tmp_path / "a1111-data" / "extensions"
    optional = Path(image_like["A1111_OPTIONAL_EXTENSIONS_DIR"])
    start_once(tmp_path, image_like)
    for folder in FOLDERS.values():
        assert (extensions / folder).resolve() == optional / folder
    assert (tmp_path / "models" / "ControlNet").is_dir()
    assert (tmp_path / "models" / ANNOTATORS_FOLDER).is_dir()
    # ADetailer reads only <data dir>/models/adetailer: the volume's folder
    assert (tmp_path / "a1111-data" / "models" / "adetailer").resolve() == tmp_path / "models" / "adetailer"

    # a later start of the same container with one left out: its link goes, A1111 does not load it
    done = start_once(tmp_path, {**image_like, "A1111_DISABLED_EXTENSIONS": "adetailer"})
    assert not (extensions / "adetailer").exists() and not (extensions / "adetailer").is_symlink()
    assert (extensions / "sd-webui-controlnet").is_symlink()
    assert "extension adetailer left out (A1111_DISABLED_EXTENSIONS)" in done.stdout + done.stderr
