#!/usr/bin/env bash
# Sets up a CPU-only AUTOMATIC1111 v1.10.1 from its git sources, for the integration suite (docs/testing.md).
#
#   scripts/setup_a1111.sh [DEST]      default: ${XDG_CACHE_HOME:-~/.cache}/a1111-worker/a1111
#
# DEST/webui is A1111 at the v1.10.1 commit with repositories/ at the commits its launch_utils.py pins,
# DEST/venv its Python 3.10 environment (torch 2.1.2, its requirements_versions.txt). Nothing of A1111 is
# copied into this project and nothing in it is patched. Idempotent: a second run only checks.
#
#   A1111_SOURCES=DIR     a folder of git repositories (OWNER+NAME/repo, OWNER+NAME or NAME; bare or not)
#                         used instead of GitHub for each repository it holds
#   A1111_BASE_PYTHON=PY  the Python 3.10 to build the venv from (default: python3.10 on PATH)
#   A1111_VENV=DIR        where the venv goes (default DEST/venv; setup_a1111_extensions.sh builds a second one)
#   TORCH_INDEX_URL=URL   where torch 2.1.2 / torchvision 0.16.2 come from (default: PyPI; its Linux wheels
#                         are the CUDA build, which runs on a CPU; the CPU index is much smaller)
#
# At the end it prints the variables that run the suite against it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$(mkdir -p "${1:-${XDG_CACHE_HOME:-$HOME/.cache}/a1111-worker/a1111}" && cd "${1:-${XDG_CACHE_HOME:-$HOME/.cache}/a1111-worker/a1111}" && pwd)"
SOURCES="${A1111_SOURCES:-}"
WEBUI="$DEST/webui"
VENV="${A1111_VENV:-$DEST/venv}"
started=$(date +%s)
log() { printf '[setup %ss] %s\n' "$(($(date +%s) - started))" "$*"; }
die() {
	printf '[setup] ERROR: %s\n' "$*" >&2
	exit 1
}

# name | GitHub repository | commit | where it goes (A1111 v1.10.1's modules/launch_utils.py pins these)
REPOSITORIES=(
	"stable-diffusion-webui|AUTOMATIC1111/stable-diffusion-webui|82a973c04367123ae98bd9abdf80d9eda9b910e2|."
	"stable-diffusion-webui-assets|AUTOMATIC1111/stable-diffusion-webui-assets|6f7db241d2f8ba7457bac5ca9753331f0c266917|repositories/stable-diffusion-webui-assets"
	# Stability-AI removed this repository (A1111 #17213); w-e-w's mirror keeps the pinned commit.
	"stablediffusion|w-e-w/stablediffusion|cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf|repositories/stable-diffusion-stability-ai"
	"generative-models|Stability-AI/generative-models|45c443b316737a4ab6e40413d7794a7f5657c19f|repositories/generative-models"
	"k-diffusion|crowsonkb/k-diffusion|ab527a9a6d347f364e3d185ba6d714e22d80cb3c|repositories/k-diffusion"
	"BLIP|salesforce/BLIP|48211a1594f1321b00f14c9f7a5b4813144b2fb9|repositories/BLIP"
)

# shellcheck source=scripts/git_sources.sh
source "$HERE/git_sources.sh" # has_commit, source_of

# 1. A1111 and its repositories, each at its pinned commit (a marker file records what was extracted).
for entry in "${REPOSITORIES[@]}"; do
	IFS='|' read -r name slug commit where <<<"$entry"
	target="$WEBUI/$where"
	[[ -f "$target/.commit-$commit" ]] && continue
	origin="$(source_of "$name" "$slug" "$commit")"
	log "$slug @ ${commit:0:10} from $origin"
	if [[ "$where" == . ]]; then
		# A clone, so that `git describe --tags` gives v1.10.1: A1111 writes it into every infotext.
		rm -rf "$WEBUI"
		git clone -q --no-checkout "$origin" "$WEBUI"
		git -C "$WEBUI" -c advice.detachedHead=false checkout -q "$commit"
	else
		rm -rf "$target"
		mkdir -p "$target"
		python3 "$HERE/git_extract.py" "$origin" "$commit" "$target"
	fi
	touch "$target/.commit-$commit"
done
[[ "$(git -C "$WEBUI" describe --tags 2>/dev/null)" == v1.10.1 ]] || log "WARNING: git describe is not v1.10.1 (tags missing in the source?)"

# 2. Python 3.10, torch 2.1.2 / torchvision 0.16.2 (A1111 1.10.1's defaults), A1111's pinned requirements,
#    and OpenAI CLIP (which A1111's own installer fetches from a GitHub zip; PyPI's openai-clip is that code).
PY="${A1111_BASE_PYTHON:-$(command -v python3.10 || true)}"
[[ -n "$PY" ]] || die "A1111 1.10.1 needs Python 3.10: install it or set A1111_BASE_PYTHON"
[[ -x "$VENV/bin/python" ]] || {
	log "creating $VENV with $PY"
	"$PY" -m venv "$VENV"
}
export PIP_DISABLE_PIP_VERSION_CHECK=1
requirements="$WEBUI/requirements_versions.txt"
stamp="$VENV/.installed-$(sha256sum "$requirements" | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
	log "installing torch 2.1.2 and A1111's requirements (the first time: several minutes, ~3 GB)"
	index=()
	[[ -n "${TORCH_INDEX_URL:-}" ]] && index=(--extra-index-url "$TORCH_INDEX_URL")
	"$VENV/bin/python" -m pip install -q "${index[@]}" "torch==2.1.2" "torchvision==0.16.2"
	"$VENV/bin/python" -m pip install -q "${index[@]}" -r "$requirements" "torch==2.1.2" "torchvision==0.16.2"
	"$VENV/bin/python" -m pip install -q --no-deps "openai-clip==1.0.1"
	touch "$stamp"
fi
"$VENV/bin/python" -c "import torch, torchvision, clip, transformers; print('torch', torch.__version__)" >/dev/null

log "done"
printf '\nRun the integration suite with:\n  A1111_DIR=%q A1111_PYTHON=%q .venv/bin/python -m pytest -m a1111\n' \
	"$WEBUI" "$VENV/bin/python"
