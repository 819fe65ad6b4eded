#!/usr/bin/env bash
# Gives the reference A1111 v1.10.1 the two extensions users send alwayson_scripts for, ControlNet
# (Mikubill/sd-webui-controlnet) and ADetailer (Bing-su/adetailer), offline (docs/testing.md, docs/extensions.md).
#
#   scripts/setup_a1111_extensions.sh [DEST]   default: ${XDG_CACHE_HOME:-~/.cache}/a1111-worker/a1111-ext
#
# DEST/extensions/<name> holds each extension at its pinned commit (start it with --data-dir D where
# D/extensions links them, as tests/a1111/test_extensions.py does); DEST/venv is A1111's venv plus the
# extensions' Python dependencies at pinned versions. A1111's own checkout is reused read-only, so one webui/
# serves both the plain and the extension-enabled A1111. Nothing of either extension is copied into this project
# and nothing is patched. Start A1111 with --skip-install (start.sh does) so that no extension installer runs
# and nothing is installed or downloaded at start-up; add --ad-no-huggingface so that ADetailer does not try to
# fetch its default YOLO models from the Hugging Face hub (it lists only the detectors in models/adetailer).
# Idempotent: a second run only checks.
#
#   A1111_DIR=DIR         the A1111 checkout to use (default: the one scripts/setup_a1111.sh makes; built when absent)
#   A1111_SOURCES=DIR     a folder of git repositories (OWNER+NAME/repo, OWNER+NAME or NAME; bare or not) used
#                         instead of GitHub, as for setup_a1111.sh
#   A1111_BASE_VENV=DIR   an A1111 venv made by setup_a1111.sh to copy instead of building a second one
#                         (saves the ~3 GB torch download); it is only read
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/a1111-worker"
DEST="$(mkdir -p "${1:-$CACHE/a1111-ext}" && cd "${1:-$CACHE/a1111-ext}" && pwd)"
WEBUI="${A1111_DIR:-$CACHE/a1111/webui}"
SOURCES="${A1111_SOURCES:-}"
VENV="$DEST/venv"
started=$(date +%s)
log() { printf '[setup-ext %ss] %s\n' "$(($(date +%s) - started))" "$*"; }
die() {
	printf '[setup-ext] ERROR: %s\n' "$*" >&2
	exit 1
}

# name | GitHub repository | commit | why this commit
EXTENSIONS=(
	# v1.1.455, the extension's last release (2024-07-25) and the one made for A1111 1.10 (1.1.436 predates it)
	"sd-webui-controlnet|Mikubill/sd-webui-controlnet|56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81"
	# v25.3.0, the newest tag: supports A1111 >= 1.6 and its dependencies all install from PyPI
	"adetailer|Bing-su/adetailer|36189cbea735b85fd01e98ac42002b8ce6f0e41d"
)

# What their install.py files would install at start-up, pinned, one list per extension with A1111's own pins as
# constraints: the same files the image's build installs (scripts/extension-requirements/, docs/extensions.md).
REQUIREMENTS="$HERE/extension-requirements"
PIP_LISTS=(-c "$REQUIREMENTS/constraints.txt" -r "$REQUIREMENTS/controlnet.txt" -r "$REQUIREMENTS/adetailer.txt")

# shellcheck source=scripts/git_sources.sh
source "$HERE/git_sources.sh" # has_commit, source_of

# 1. A1111 itself (setup_a1111.sh; a second run of it only checks).
if [[ ! -f "$WEBUI/launch.py" ]]; then
	log "no A1111 at $WEBUI: running setup_a1111.sh"
	"$HERE/setup_a1111.sh" "$(dirname "$WEBUI")"
fi

# 2. The extensions, each at its pinned commit (a marker file records what was extracted).
for entry in "${EXTENSIONS[@]}"; do
	IFS='|' read -r name slug commit <<<"$entry"
	target="$DEST/extensions/$name"
	[[ -f "$target/.commit-$commit" ]] && continue
	origin="$(source_of "$name" "$slug" "$commit")"
	log "$slug @ ${commit:0:10} from $origin"
	rm -rf "$target"
	mkdir -p "$target"
	python3 "$HERE/git_extract.py" "$origin" "$commit" "$target"
	touch "$target/.commit-$commit"
done

# 3. The venv: a copy of A1111_BASE_VENV (its scripts' first lines point at the copy) or a new one built by
#    setup_a1111.sh, then the extensions' dependencies.
if [[ ! -x "$VENV/bin/python" ]]; then
	if [[ -n "${A1111_BASE_VENV:-}" ]]; then
		base="$(cd "$A1111_BASE_VENV" && pwd)"
		log "copying $base to $VENV"
		rm -rf "$VENV.partial"
		cp -a "$base" "$VENV.partial"
		grep -rlI --null "$base" "$VENV.partial/bin" | xargs -0 -r sed -i "s|$base|$VENV|g"
		mv "$VENV.partial" "$VENV"
	else
		A1111_VENV="$VENV" "$HERE/setup_a1111.sh" "$(dirname "$WEBUI")"
	fi
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VENV/.extensions-$(cat "$REQUIREMENTS"/*.txt | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
	log "installing the extensions' dependencies (the first time: a few minutes, ~1 GB)"
	"$VENV/bin/python" -m pip install -q "${PIP_LISTS[@]}"
	touch "$stamp"
fi
"$VENV/bin/python" -c "import mediapipe, ultralytics, svglib, fvcore, onnxruntime, cv2, controlnet_aux, rich" \
	>/dev/null

log "done"
printf '\nRun the extension suite with:\n  A1111_DIR=%q A1111_EXT_DIR=%q .venv/bin/python -m pytest tests/a1111/test_extensions.py\n' \
	"$WEBUI" "$DEST"
