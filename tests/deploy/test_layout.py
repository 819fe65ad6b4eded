"""The image's extension and baked models are where A1111 v1.10.1 looks, given the flags start.sh passes.

``a1111_lookup`` states A1111's own rules as a function of its command line, from its sources:

* ``modules/paths_internal.py``: user extensions load from ``<data path>/extensions``, the data path being
  ``--data-dir`` (else the install); A1111's models folder is ``--models-dir``, else ``<data path>/models``;
* ``modules/sd_models.py``: checkpoints from ``<models>/Stable-diffusion`` and ``--ckpt-dir``;
* ``extensions-builtin/Lora/preload.py`` + ``networks.py``: LoRAs only from ``--lora-dir`` (default
  ``<models>/Lora``) and ``--lyco-dir-backcompat`` (default ``<models>/LyCORIS``);
* ``modules/sd_vae.py``: VAEs from ``<models>/VAE`` and ``--vae-dir``;
* ``modules/cmd_args.py``: embeddings only from ``--embeddings-dir`` (default ``<data path>/embeddings``).

The same placement is proven on the real A1111 by ``tests/a1111/test_start_sh.py`` (extension routes answer,
a baked LoRA and checkpoint are listed). If the Dockerfile, start.sh and these rules disagree, a test here fails.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from worker.preflight.controlnet_annotators import ANNOTATORS_FOLDER
from worker.registry.volume import KIND_DIRS

ROOT = Path(__file__).resolve().parents[2]
START = str(ROOT / "start.sh")
EXTENSION = ROOT / "webui_extensions" / "worker-routes"


def a1111_lookup(args: list[str], install: Path) -> dict[str, list[Path]]:
    """Where A1111 v1.10.1 started with ``args`` looks for each kind of thing (module docstring)."""
    flags = dict(itertools.pairwise(args))
    data = Path(flags.get("--data-dir", str(install)))
    models = Path(flags.get("--models-dir", str(data / "models")))
    return {
        "extensions": [data / "extensions"],
        "checkpoints": [
            models / "Stable-diffusion",
            *([Path(flags["--ckpt-dir"])] if "--ckpt-dir" in flags else []),
        ],
        "loras": [
            Path(flags.get("--lora-dir", str(models / "Lora"))),
            Path(flags.get("--lyco-dir-backcompat", str(models / "LyCORIS"))),
        ],
        "vae": [models / "VAE", *([Path(flags["--vae-dir"])] if "--vae-dir" in flags else [])],
        "embeddings": [Path(flags.get("--embeddings-dir", str(data / "embeddings")))],
    }


def run_start(tmp_path: Path, *args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    install = tmp_path / "a1111"
    install.mkdir(exist_ok=True)
    (install / "launch.py").write_text("raise SystemExit('not a real A1111')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "A1111_"))}
    env.update(
        A1111_DIR=str(install),
        A1111_DATA_DIR=str(data_dir or tmp_path / "a1111 data"),
        WORKER_MODELS_DIR=str(tmp_path / "volume" / "models"),
    )
    return subprocess.run([START, *args], env=env, capture_output=True, text=True, timeout=30)


def layout(tmp_path: Path) -> dict[str, Path]:
    result = run_start(tmp_path, "--print-layout")
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    return {key: Path(shlex.split(value)[0]) for key, value in values.items()}


def lookup(tmp_path: Path) -> dict[str, list[Path]]:
    result = run_start(tmp_path, "--print-engine-command")
    assert result.returncode == 0, result.stderr
    return a1111_lookup(shlex.split(result.stdout), tmp_path / "a1111")


def test_every_layout_folder_is_one_a1111_reads(tmp_path: Path) -> None:
    places, reads = layout(tmp_path), lookup(tmp_path)
    assert places["A1111_EXTENSIONS_DIR"] in reads["extensions"]
    assert places["A1111_BAKED_CHECKPOINTS_DIR"] in reads["checkpoints"]
    assert places["A1111_BAKED_LORAS_DIR"] in reads["loras"]
    assert places["A1111_BAKED_VAE_DIR"] in reads["vae"]
    # the baked folders are on local disk, never the network volume
    volume = tmp_path / "volume"
    assert not any(volume in path.parents for key, path in places.items() if key.startswith("A1111_"))


def test_controlnet_annotators_live_on_the_volume_outside_its_model_folder(tmp_path: Path) -> None:
    """Pre-flight checks a preprocessor's weights in the folder start.sh gives ControlNet; not ``ControlNet/``,
    which the extension lists as its models."""
    annotators = layout(tmp_path)["CONTROLNET_ANNOTATORS_DIR"]
    assert annotators == tmp_path / "volume" / "models" / ANNOTATORS_FOLDER
    assert annotators.name != KIND_DIRS["controlnet"] and KIND_DIRS["controlnet"] not in annotators.parts


def test_install_extension_puts_it_where_a1111_loads_extensions(tmp_path: Path) -> None:
    result = run_start(tmp_path, "--install-extension", str(EXTENSION))
    assert result.returncode == 0, result.stderr
    (extensions,) = lookup(tmp_path)["extensions"]
    installed = extensions / "worker-routes"
    for source in EXTENSION.rglob("*.py"):
        copy = installed / source.relative_to(EXTENSION)
        assert copy.read_bytes() == source.read_bytes(), copy
    assert (installed / "scripts" / "worker_routes.py").is_file()  # A1111 runs <ext>/scripts/*.py


def test_bake_models_puts_each_kind_where_a1111_lists_it(tmp_path: Path) -> None:
    bake = tmp_path / "bake"
    files = {"checkpoints": "base.safetensors", "loras": "style.safetensors", "vae": "fix.safetensors"}
    for kind, name in files.items():
        (bake / kind).mkdir(parents=True)
        (bake / kind / name).write_bytes(b"x")
    result = run_start(tmp_path, "--bake-models", str(bake))
    assert result.returncode == 0, result.stderr
    reads = lookup(tmp_path)
    for kind, name in files.items():
        found = [folder / name for folder in reads[kind] if (folder / name).is_file()]
        assert found, f"baked {kind} {name} is in none of {reads[kind]}"
        assert not (bake / kind / name).exists()


def test_embeddings_cannot_be_baked(tmp_path: Path) -> None:
    (tmp_path / "bake" / "embeddings").mkdir(parents=True)
    (tmp_path / "bake" / "embeddings" / "neg.safetensors").write_bytes(b"x")
    result = run_start(tmp_path, "--bake-models", str(tmp_path / "bake"))
    assert result.returncode != 0
    assert "embeddings cannot be baked" in result.stderr and "--embeddings-dir" in result.stderr


def dockerfile_instructions() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_places_things_only_through_start_sh() -> None:
    instructions = dockerfile_instructions()
    copy_start = next(i for i, line in enumerate(instructions) if line.startswith("COPY start.sh /start.sh"))
    install = [i for i, line in enumerate(instructions) if "/start.sh --install-extension" in line]
    bake = [i for i, line in enumerate(instructions) if "/start.sh --bake-models" in line]
    assert install and bake, "the Dockerfile must install the extension and bake models through start.sh"
    assert copy_start < min(install + bake)
    for line in instructions:
        if line.startswith(("COPY", "ADD")):
            destination = PurePosixPath(line.split()[-1])
            assert "extensions" not in destination.parts, f"{line!r} writes an extension folder itself"
        if line.startswith("RUN") and "/start.sh --" not in line:
            assert "models/Lora" not in line and "Stable-diffusion" not in line, line


@pytest.mark.parametrize("variable", ["A1111_DIR", "A1111_DATA_DIR"])
def test_dockerfile_env_is_what_start_sh_defaults_to(variable: str) -> None:
    """start.sh's defaults and the image's ENV name the same folders (a mismatch would split the layout)."""
    env = dict(
        re.findall(
            r"(\w+)=(\S+)", " ".join(line for line in dockerfile_instructions() if line.startswith("ENV"))
        )
    )
    default = re.search(rf'^{variable}="\${{{variable}:-([^}}]+)}}"', Path(START).read_text(), re.MULTILINE)
    assert default is not None and env[variable] == default.group(1)
