#!/usr/bin/env bash
# Builds the image with podman, online (the Dockerfile's defaults: the production build) or offline (a Debian base
# made here, torch from PyPI, A1111's git repositories from a local folder), and reports the time of every build
# step, the image's size and its size by layer. docs/deploying.md explains both; docs/performance.md the numbers.
#
#   scripts/build_image.sh                          production build (needs GitHub, PyTorch's index, the HF hub)
#   scripts/build_image.sh --offline SOURCES        offline test build; SOURCES holds the git repositories as
#                                                   OWNER+NAME/repo, OWNER+NAME or NAME (bare or not)
#   scripts/build_image.sh --offline SOURCES --bake ID FILE   also bake catalogue entry ID, taken from FILE
#   ... --build-arg NAME=VALUE                      passed to podman build (repeatable), e.g. ADETAILER_COMMIT=
#                                                   to leave ADetailer out (docs/extensions.md)
#
# Environment: IMAGE_TAG (default localhost/a1111-worker:test), IMAGE_WORK_DIR (default build/image: the base,
# the offline folder, logs and timings), IMAGE_BASE (default localhost/debian-min:bookworm, made when absent),
# DEBIAN_MIRROR (default: the first Debian URI in /etc/apt/sources.list*), PYTHON (runs the helpers: .venv's).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE_TAG="${IMAGE_TAG:-localhost/a1111-worker:test}"
WORK="$(mkdir -p "${IMAGE_WORK_DIR:-$ROOT/build/image}" && cd "${IMAGE_WORK_DIR:-$ROOT/build/image}" && pwd)"
IMAGE_BASE="${IMAGE_BASE:-localhost/debian-min:bookworm}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
MOUNT=/offline-sources # where the offline folder appears during the build (never in the image)

# The commits A1111 v1.10.1 pins (the Dockerfile's *_COMMIT_HASH defaults), with the folder launch.py expects.
REPOSITORIES=(
	"stable-diffusion-webui-assets AUTOMATIC1111+stable-diffusion-webui-assets 6f7db241d2f8ba7457bac5ca9753331f0c266917"
	"stable-diffusion-stability-ai Stability-AI+stablediffusion cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf"
	"generative-models Stability-AI+generative-models 45c443b316737a4ab6e40413d7794a7f5657c19f"
	"k-diffusion crowsonkb+k-diffusion ab527a9a6d347f364e3d185ba6d714e22d80cb3c"
	"BLIP salesforce+BLIP 48211a1594f1321b00f14c9f7a5b4813144b2fb9"
)
A1111_COMMIT=82a973c04367123ae98bd9abdf80d9eda9b910e2
# ControlNet and ADetailer: "build argument|folder|OWNER+NAME"; their commits are the Dockerfile's defaults
# (or a --build-arg's value), so the pins are written once
EXTENSIONS=(
	"CONTROLNET_COMMIT|sd-webui-controlnet|Mikubill+sd-webui-controlnet"
	"ADETAILER_COMMIT|adetailer|Bing-su+adetailer"
)

log() { printf '[build_image] %s\n' "$*" >&2; }
die() {
	printf '[build_image] ERROR: %s\n' "$*" >&2
	exit 2
}

sources=""
bake_id=""
bake_file=""
extra_args=()
while (($#)); do
	case "$1" in
	--offline)
		[[ $# -ge 2 ]] || die "--offline needs a folder of git repositories"
		sources="$(cd "$2" && pwd)" || die "--offline $2: not a folder"
		shift 2
		;;
	--bake)
		[[ $# -ge 3 ]] || die "--bake needs a catalogue id and a file"
		bake_id="$2" bake_file="$3"
		[[ -f "$bake_file" ]] || die "--bake $bake_id $bake_file: no such file"
		shift 3
		;;
	--build-arg)
		[[ $# -ge 2 && "$2" == *=* ]] || die "--build-arg needs NAME=VALUE"
		extra_args+=(--build-arg "$2")
		shift 2
		;;
	-h | --help)
		sed -n '2,16p' "$0"
		exit 0
		;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
[[ -z "$bake_file" || -n "$sources" ]] || die "--bake with a local file needs --offline (online, BAKE_MODEL downloads)"
command -v podman >/dev/null || die "podman is not installed (Debian: apt-get install -y podman runc; mmdebstrap for --offline)"

# crun cannot run containers on a cgroups v1/v2 hybrid host and podman's default ulimits are refused in some VMs:
# runc and lower limits work everywhere we have tried (tests/image uses the same file).
write_containers_conf() {
	cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
	export CONTAINERS_CONF="${CONTAINERS_CONF:-$WORK/containers.conf}"
}

debian_mirror() {
	[[ -n "${DEBIAN_MIRROR:-}" ]] && {
		echo "$DEBIAN_MIRROR"
		return
	}
	local uri
	uri="$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
		head -n1 | awk '{print $2}')" || true
	echo "${uri:-http://deb.debian.org/debian}"
}

make_base() {
	podman image exists "$IMAGE_BASE" && return 0
	command -v mmdebstrap >/dev/null || die "making the base $IMAGE_BASE needs mmdebstrap (apt-get install -y mmdebstrap)"
	log "making the base image $IMAGE_BASE from $(debian_mirror) (about a minute)"
	mmdebstrap --variant=minbase --mode=root bookworm "$WORK/rootfs.tar" "deb $(debian_mirror) bookworm main" >&2
	podman import "$WORK/rootfs.tar" "$IMAGE_BASE" >/dev/null
	rm -f "$WORK/rootfs.tar"
}

# git_dir NAME [COMMIT]: the folder in $sources holding that repository (and that commit)
git_dir() {
	local c
	for c in "$sources/$1/repo" "$sources/$1" "$sources/${1#*+}" "$sources"/*+"${1#*+}"/repo; do
		if git --git-dir="$c" rev-parse -q --verify "${2:-HEAD}^{commit}" >/dev/null 2>&1 ||
			git -C "$c" rev-parse -q --verify "${2:-HEAD}^{commit}" >/dev/null 2>&1; then
			echo "$c"
			return
		fi
	done
	die "no repository $1 holding ${2:-HEAD} in $sources"
}

# extension_commit ARG: a --build-arg's value for ARG, else the Dockerfile's default
extension_commit() {
	local arg
	for arg in "${extra_args[@]}"; do
		[[ "$arg" == "$1="* ]] && {
			echo "${arg#*=}"
			return
		}
	done
	sed -n "s/^ARG $1=//p" "$ROOT/Dockerfile"
}

# ControlNet and ADetailer as checkouts at their commits (extracted, like A1111's repositories), the .git kept so
# that the build can check the commit; an extension left out (an empty commit) is not needed
make_offline_extensions() {
	local out="$1" arg folder repo commit
	mkdir -p "$out"
	for entry in "${EXTENSIONS[@]}"; do
		IFS='|' read -r arg folder repo <<<"$entry"
		commit="$(extension_commit "$arg")"
		[[ -n "$commit" ]] || continue
		[[ "$(git -C "$out/$folder" rev-parse HEAD 2>/dev/null)" == "$commit" ]] && continue
		rm -rf "${out:?}/$folder"
		git clone -q --no-checkout "$(git_dir "$repo" "$commit")" "$out/$folder"
		git -C "$out/$folder" update-ref --no-deref HEAD "$commit"
		"$PYTHON" "$ROOT/scripts/git_extract.py" "$out/$folder" "$commit" "$out/$folder" >&2
	done
}

# The offline folder: A1111 as a bare repository (cloned with its tag, as online), its repositories as checkouts
# at the pinned commits (snapshots may lack blobs A1111 never reads, so they are extracted, not checked out),
# a Hugging Face cache with CLIP's tokenizer, the host's CA bundle for pip, and the model to bake.
make_offline_folder() {
	local out="$WORK/offline" name repo commit src
	mkdir -p "$out/git/repositories"
	if [[ ! -d "$out/git/stable-diffusion-webui.git" ]]; then
		git clone -q --bare "$(git_dir AUTOMATIC1111+stable-diffusion-webui "$A1111_COMMIT")" "$out/git/stable-diffusion-webui.git"
	fi
	for entry in "${REPOSITORIES[@]}"; do
		read -r name repo commit <<<"$entry"
		[[ "$(git -C "$out/git/repositories/$name" rev-parse HEAD 2>/dev/null)" == "$commit" ]] && continue
		src="$(git_dir "$repo" "$commit")"
		rm -rf "$out/git/repositories/$name"
		git clone -q --no-checkout "$src" "$out/git/repositories/$name"
		git -C "$out/git/repositories/$name" update-ref --no-deref HEAD "$commit"
		"$PYTHON" "$ROOT/scripts/git_extract.py" "$out/git/repositories/$name" "$commit" "$out/git/repositories/$name" >&2
	done
	make_offline_extensions "$out/git/extensions"
	"$PYTHON" "$ROOT/scripts/image_offline.py" hf-cache "$out/hf-home" >&2
	cp /etc/ssl/certs/ca-certificates.crt "$out/ca.crt"
	printf '[global]\ncert = %s/ca.crt\n' "$MOUNT" >"$out/pip.conf"
	rm -rf "$out/bake"
	if [[ -n "$bake_file" ]]; then
		local placed
		placed="$("$PYTHON" "$ROOT/scripts/image_offline.py" bake-path "$bake_id")"
		mkdir -p "$out/bake/$(dirname "$placed")"
		ln "$bake_file" "$out/bake/$placed" 2>/dev/null || cp "$bake_file" "$out/bake/$placed"
		# a checkpoint's model config beside it (A1111 reads <stem>.yaml) is baked with it
		if [[ -f "${bake_file%.*}.yaml" ]]; then cp "${bake_file%.*}.yaml" "$out/bake/${placed%.*}.yaml"; fi
	fi
}

build_args=()
volumes=()
if [[ -n "$sources" ]]; then
	write_containers_conf
	make_base
	make_offline_folder
	build_args=(
		--build-arg "BASE_IMAGE=$IMAGE_BASE"
		--build-arg PYTHON=python3.11
		--build-arg "TORCH_COMMAND=pip install torch==2.1.2 torchvision==0.16.2"
		--build-arg XFORMERS_PACKAGE=
		--build-arg CLIP_PACKAGE=openai-clip==1.0.1
		--build-arg OPENCLIP_PACKAGE=open-clip-torch==2.20.0
		--build-arg "GIT_SOURCES=$MOUNT/git"
		--build-arg "HF_CACHE_SEED=$MOUNT/hf-home"
	)
	volumes=(-v "$WORK/offline:$MOUNT:ro" -v "$WORK/offline/pip.conf:/etc/pip.conf:ro")
	if [[ -n "$bake_id" ]]; then
		build_args+=(--build-arg "BAKE_MODEL=$bake_id" --build-arg "BAKE_SOURCE_DIR=$MOUNT/bake")
	fi
elif [[ -n "$bake_id" ]]; then
	build_args=(--build-arg "BAKE_MODEL=$bake_id")
fi

# Every output line with the seconds since the start, so each step's time can be read back.
mkdir -p "$WORK/logs"
build_log="$WORK/logs/build-$(date +%Y%m%d-%H%M%S).log"
log "building $IMAGE_TAG (log: $build_log)"
start=$SECONDS
set +e
# --format docker: podman's default OCI format drops SHELL (RUN lines would lose pipefail) and HEALTHCHECK.
podman build --format docker --layers "${volumes[@]}" "${build_args[@]}" "${extra_args[@]}" -t "$IMAGE_TAG" "$ROOT" 2>&1 |
	while IFS= read -r line; do printf '%6d %s\n' $((SECONDS - start)) "$line"; done | tee "$build_log" >&2
status=${PIPESTATUS[0]}
set -e
total=$((SECONDS - start))
[[ "$status" == 0 ]] || die "podman build failed (exit $status) after ${total}s; see $build_log"

"$PYTHON" "$ROOT/scripts/image_report.py" --log "$build_log" --image "$IMAGE_TAG" --total "$total" \
	--json "$WORK/logs/last-build.json"
