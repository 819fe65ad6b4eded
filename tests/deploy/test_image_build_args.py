"""The Dockerfile's build arguments: with none given, the build runs exactly the production commands.

Every RUN line is executed by bash in order, with the ARG and ENV values in force at that line and every
external command replaced by a stub that records its arguments (and, for A1111's launch.py, the environment
it reads). The production sequence (CUDA base's python3.10, A1111 and its repositories from GitHub, cu121
torch, xformers, the CLIP tokenizer from the hub) is written out below: a change to a default or to the
default path fails here. The offline arguments are run the same way and must reach neither GitHub nor the hub.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
A1111_COMMIT = "82a973c04367123ae98bd9abdf80d9eda9b910e2"
CONTROLNET_COMMIT = "56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81"  # v1.1.455
ADETAILER_COMMIT = "36189cbea735b85fd01e98ac42002b8ce6f0e41d"  # v25.3.0
#: what launch.py and the tokenizer step read from the environment
WATCHED = (
    "TORCH_COMMAND",
    "XFORMERS_PACKAGE",
    "CLIP_PACKAGE",
    "OPENCLIP_PACKAGE",
    "STABLE_DIFFUSION_REPO",
    "STABLE_DIFFUSION_COMMIT_HASH",
)
STUB = r"""#!/bin/bash
line="${0##*/}"
for a in "$@"; do line+=" $a"; done
watched=""
[[ " $* " == *" launch.py "* ]] && watched="@WATCHED@"
[[ " $* " == *"from transformers import"* ]] && watched="HF_HUB_OFFLINE"
for v in $watched; do [[ -n "${!v+x}" ]] && line+=" {$v=${!v}}"; done
printf '%s\n' "$line" >> "$RECORD"
case "${0##*/} $*" in
    "git -C "*"/sd-webui-controlnet rev-parse HEAD") echo @CONTROLNET@ ;;
    "git -C "*"/adetailer rev-parse HEAD") echo @ADETAILER@ ;;
    "git -C "*" rev-parse HEAD") echo @HEAD@ ;;
    *" -m venv "*) /bin/mkdir -p "${@: -1}/bin" && /bin/ln -sf "$0" "${@: -1}/bin/python" ;;
esac
exit 0
"""
TOOLS = ("apt-get", "git", "cp", "rm", "mkdir", "python3.10", "python3.11", "start.sh", "curl", "ln")


def extension_from_github(folder: str, repository: str, commit: str) -> list[str]:
    """One extension fetched at its commit alone, checked, its git history dropped."""
    dest = f"OPT/a1111-extensions/{folder}"
    return [
        f"git init -q {dest}",
        f"git -C {dest} fetch -q --depth 1 https://github.com/{repository}.git {commit}",
        f"git -C {dest} checkout -q FETCH_HEAD",
        f"git -C {dest} rev-parse HEAD",
        f"rm -rf {dest}/.git",
    ]


PRODUCTION = [
    "apt-get update",
    "apt-get install -y --no-install-recommends python3.10 python3.10-venv python3-pip git curl "
    "ca-certificates libgl1 libglib2.0-0 libgoogle-perftools4 bc",
    "rm -rf /var/lib/apt/lists/*",
    "git clone --branch v1.10.1 --depth 1 https://github.com/AUTOMATIC1111/stable-diffusion-webui.git OPT/a1111",
    "git -C OPT/a1111 rev-parse HEAD",
    "python3.10 -m venv venv",
    "python -m pip install --upgrade pip==24.0",
    "python launch.py --skip-torch-cuda-test --xformers --no-download-sd-model --skip-version-check "
    "--data-dir OPT/a1111-data --exit "
    "{TORCH_COMMAND=pip install torch==2.1.2 torchvision==0.16.2 --extra-index-url "
    "https://download.pytorch.org/whl/cu121} {XFORMERS_PACKAGE=xformers==0.0.23.post1} "
    "{STABLE_DIFFUSION_REPO=https://github.com/w-e-w/stablediffusion.git} "
    "{STABLE_DIFFUSION_COMMIT_HASH=cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf}",
    "python -c import torch, xformers; print('torch', torch.__version__, 'xformers', xformers.__version__)",
    "python -c from transformers import CLIPTokenizer, CLIPTextConfig; "
    "CLIPTokenizer.from_pretrained('openai/clip-vit-large-patch14'); "
    "CLIPTextConfig.from_pretrained('openai/clip-vit-large-patch14')",
    "mkdir -p OPT/a1111-extensions",
    *extension_from_github("sd-webui-controlnet", "Mikubill/sd-webui-controlnet", CONTROLNET_COMMIT),
    *extension_from_github("adetailer", "Bing-su/adetailer", ADETAILER_COMMIT),
    "python -m pip install -c /tmp/extension-requirements/constraints.txt "
    "-r /tmp/extension-requirements/controlnet.txt -r /tmp/extension-requirements/adetailer.txt",
    "rm -rf /tmp/extension-requirements",
    "python3.10 -m venv OPT/worker-venv",
    "python -m pip install OPT/worker",
    "python -m pip uninstall -y a1111-runpod-worker",
    "python -m pip install --no-deps OPT/worker",
    "python -c import runpod, uvicorn, worker.routes",
    "start.sh --install-extension /tmp/worker-routes",
    "rm -rf /tmp/worker-routes",
]


def instructions() -> list[tuple[str, str]]:
    """(keyword, rest) for every instruction, continuation lines joined, comments dropped."""
    lines = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", "", "\n".join(lines))  # as Docker joins them: nothing in between
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def assignments(rest: str) -> dict[str, str]:
    """``ARG A=1`` / ``ENV A=1 B="x y"`` (shell-style quoting, as the Dockerfile uses)."""
    return dict(word.split("=", 1) if "=" in word else (word, "") for word in shlex.split(rest))


def dry_run(tmp_path: Path, build_args: dict[str, str]) -> list[str]:
    """Every command the RUN lines start, in order, with /opt/ mapped to ``OPT`` (no glob is expanded)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub = stubs / "stub"
    stub.write_text(
        STUB.replace("@WATCHED@", " ".join(WATCHED))
        .replace("@HEAD@", A1111_COMMIT)
        .replace("@CONTROLNET@", CONTROLNET_COMMIT)
        .replace("@ADETAILER@", ADETAILER_COMMIT)
    )
    stub.chmod(0o755)
    for tool in TOOLS:
        (stubs / tool).symlink_to(stub)
    opt = tmp_path / "opt"
    record = tmp_path / "record"
    record.touch()
    values: dict[str, str] = {}
    env = {"PATH": str(stubs), "RECORD": str(record)}
    workdir = tmp_path
    for keyword, rest in instructions():
        rest = rest.replace("/opt/", f"{opt}/").replace("/start.sh", "start.sh")
        if keyword == "ARG":
            for name, default in assignments(rest).items():
                values[name] = build_args.get(name, default)
                env[name] = values[name]
        elif keyword == "ENV":
            env.update(assignments(rest))
        elif keyword == "WORKDIR":
            workdir = Path(rest)
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "RUN":
            result = subprocess.run(
                ["/bin/bash", "-f", "-o", "pipefail", "-c", rest],
                env=env,
                cwd=workdir,
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, (rest, result.stderr)
    return [line.replace(str(opt), "OPT") for line in record.read_text().splitlines()]


def test_without_build_arguments_the_build_is_the_production_one(tmp_path: Path) -> None:
    assert dry_run(tmp_path, {}) == PRODUCTION


def test_production_base_image_is_the_cuda_one() -> None:
    args = {k: v for kw, rest in instructions() if kw == "ARG" for k, v in assignments(rest).items()}
    base = next(rest for kw, rest in instructions() if kw == "FROM")
    assert base == "${BASE_IMAGE}"
    assert args["BASE_IMAGE"] == "nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04"
    for offline_only in (
        "GIT_SOURCES",
        "HF_CACHE_SEED",
        "BAKE_SOURCE_DIR",
        "CLIP_PACKAGE",
        "OPENCLIP_PACKAGE",
    ):
        assert args[offline_only] == "", offline_only


@pytest.mark.parametrize("bake", [False, True])
def test_offline_arguments_reach_neither_github_nor_the_hub(tmp_path: Path, bake: bool) -> None:
    offline = {
        "BASE_IMAGE": "localhost/debian-min:bookworm",
        "PYTHON": "python3.11",
        "TORCH_COMMAND": "pip install torch==2.1.2 torchvision==0.16.2",
        "XFORMERS_PACKAGE": "",
        "CLIP_PACKAGE": "openai-clip==1.0.1",
        "OPENCLIP_PACKAGE": "open-clip-torch==2.20.0",
        "GIT_SOURCES": "/offline-sources/git",
        "HF_CACHE_SEED": "/offline-sources/hf-home",
    }
    if bake:
        offline |= {"BAKE_MODEL": "deliberate-v6", "BAKE_SOURCE_DIR": "/offline-sources/bake"}
    commands = dry_run(tmp_path, offline)
    text = "\n".join(commands)
    assert "github.com/AUTOMATIC1111" not in text and "xformers" not in text.replace("import torch", "")
    assert (
        "git clone --branch v1.10.1 --depth 1 file:///offline-sources/git/stable-diffusion-webui.git" in text
    )
    assert "cp -a /offline-sources/git/repositories OPT/a1111/repositories" in text
    for folder in ("sd-webui-controlnet", "adetailer"):
        assert f"cp -a /offline-sources/git/extensions/{folder} OPT/a1111-extensions/{folder}" in text
    assert "github.com/Mikubill" not in text and "github.com/Bing-su" not in text
    launch = next(c for c in commands if " launch.py " in c)
    assert "--xformers" not in launch and "{CLIP_PACKAGE=openai-clip==1.0.1}" in launch
    tokenizer = next(c for c in commands if "from transformers" in c)
    assert tokenizer.endswith("{HF_HUB_OFFLINE=1}")  # the hub is never asked
    assert ("cp -a /offline-sources/bake/. /tmp/bake/" in text) is bake
    assert os.path.basename("python3.11") in text and "python3.10" not in text


@pytest.mark.parametrize(
    ("left_out", "kept"), [("CONTROLNET_COMMIT", "adetailer"), ("ADETAILER_COMMIT", "controlnet")]
)
def test_an_empty_commit_leaves_that_extension_and_its_dependencies_out(
    tmp_path: Path, left_out: str, kept: str
) -> None:
    commands = dry_run(tmp_path, {left_out: ""})
    fetched = [c for c in commands if c.startswith("git init -q OPT/a1111-extensions/")]
    assert fetched == [
        f"git init -q OPT/a1111-extensions/{'sd-webui-controlnet' if kept == 'controlnet' else kept}"
    ]
    installs = [c for c in commands if "/tmp/extension-requirements/constraints.txt" in c]
    assert installs == [
        "python -m pip install -c /tmp/extension-requirements/constraints.txt "
        f"-r /tmp/extension-requirements/{kept}.txt"
    ]


def test_with_both_commits_empty_nothing_of_the_extensions_is_installed(tmp_path: Path) -> None:
    commands = dry_run(tmp_path, {"CONTROLNET_COMMIT": "", "ADETAILER_COMMIT": ""})
    fetched_or_installed = ("OPT/a1111-extensions/", "extension-requirements/constraints.txt")
    assert commands == [c for c in PRODUCTION if not any(part in c for part in fetched_or_installed)]


def test_the_extension_pins_are_those_of_the_reference_setup() -> None:
    """The image and the reference A1111 the a1111 suite proves run the same extension commits (their Python
    dependencies are one set of files, scripts/extension-requirements/, read by both)."""
    args = {k: v for kw, rest in instructions() if kw == "ARG" for k, v in assignments(rest).items()}
    setup = (ROOT / "scripts" / "setup_a1111_extensions.sh").read_text()
    assert f'|Mikubill/sd-webui-controlnet|{args["CONTROLNET_COMMIT"]}"' in setup
    assert f'|Bing-su/adetailer|{args["ADETAILER_COMMIT"]}"' in setup
    assert (args["CONTROLNET_COMMIT"], args["ADETAILER_COMMIT"]) == (CONTROLNET_COMMIT, ADETAILER_COMMIT)


def test_the_catalogue_path_is_where_the_image_copies_it() -> None:
    """The catalogue is not part of the installed package: the image names the copy it makes."""
    env = {k: v for kw, rest in instructions() if kw == "ENV" for k, v in assignments(rest).items()}
    copies = [rest.split() for kw, rest in instructions() if kw == "COPY" and "cache_registry.json" in rest]
    assert len(copies) == 1 and copies[0][0] == "cache_registry.json"
    assert env["WORKER_CATALOGUE_PATH"] == copies[0][-1].rstrip("/") + "/cache_registry.json"


def test_a_baked_build_reuses_every_layer_before_the_bake() -> None:
    """A build argument is in the environment of every RUN after its declaration, so a new value rebuilds them:
    declared at the top, BAKE_MODEL made a baked image reinstall torch and A1111's requirements (found when the
    image suite built its baked variant after the plain one)."""
    found = instructions()
    bake_arg = next(i for i, (kw, rest) in enumerate(found) if kw == "ARG" and rest.startswith("BAKE_MODEL="))
    heavy = [
        i
        for i, (kw, rest) in enumerate(found)
        if kw == "RUN" and ("launch.py" in rest or "pip install" in rest)
    ]
    bake_run = next(i for i, (kw, rest) in enumerate(found) if kw == "RUN" and "--bake-models" in rest)
    assert heavy and max(heavy) < bake_arg < bake_run
    for kw, rest in found[:bake_arg]:
        assert "BAKE_" not in rest, (kw, rest)
