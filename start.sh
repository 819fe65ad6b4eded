#!/usr/bin/env bash
# Starts the engine (A1111 or the embedded diffusers server), supervises it, and runs the worker.
#
# PID 1 in the image (exec-form ENTRYPOINT), so it forwards SIGTERM to its children and waits for them.
# The engine's output goes to stdout with an "[engine] " prefix (RunPod's log view), never to the volume.
# A crashed engine is restarted WORKER_ENGINE_MAX_RESTARTS times, then the container exits non-zero so
# RunPod replaces it. Every variable is documented in docs/deploying.md.
#
#   ./start.sh                          start (WORKER_MODE=serverless|api|local)
#   ./start.sh --print-engine-command   print the engine command line (secrets redacted) and exit
#   ./start.sh --print-layout           print where A1111 finds extensions, baked models and ControlNet's
#                                       annotator weights, and exit
#   ./start.sh --install-extension DIR  copy an A1111 extension where A1111 loads it (image build)
#   ./start.sh --bake-models DIR        move DIR/{checkpoints,loras,vae}/* where A1111 finds them (image build)
set -euo pipefail

log() { printf '[start] %s\n' "$*"; }
die() {
	printf '[start] ERROR: %s\n' "$*" >&2
	exit 2
}

# --- configuration ----------------------------------------------------------------------------------
WORKER_MODE="${WORKER_MODE:-serverless}"
WORKER_ENGINE="${WORKER_ENGINE:-auto}"
A1111_DIR="${A1111_DIR:-/opt/a1111}"
A1111_DATA_DIR="${A1111_DATA_DIR:-/opt/a1111-data}"
A1111_PYTHON="${A1111_PYTHON:-}"
A1111_EXTRA_ARGS="${A1111_EXTRA_ARGS:-}"
A1111_NO_HASHING="${A1111_NO_HASHING:-0}"
A1111_API_AUTH="${A1111_API_AUTH:-}"
WORKER_EMBEDDED_EXTRA_ARGS="${WORKER_EMBEDDED_EXTRA_ARGS:-}"
WORKER_EXPOSE_ENGINE="${WORKER_EXPOSE_ENGINE:-0}"
WORKER_ENGINE_PORT="${WORKER_ENGINE_PORT:-3000}"
WORKER_ENGINE_MAX_RESTARTS="${WORKER_ENGINE_MAX_RESTARTS:-3}"
WORKER_STOP_TIMEOUT_S="${WORKER_STOP_TIMEOUT_S:-10}"
WORKER_SKIP_GPU_CHECK="${WORKER_SKIP_GPU_CHECK:-0}"
WORKER_LOCAL_API_PORT="${WORKER_LOCAL_API_PORT:-8000}"
WORKER_ROUTES_PORT="${WORKER_ROUTES_PORT:-3001}"
PYTHON="${WORKER_PYTHON:-python}"

# make run on a fresh machine has no network volume: keep the models next to the checkout instead.
if [[ -z "${WORKER_MODELS_DIR:-}" ]]; then
	if [[ -d /runpod-volume ]]; then
		WORKER_MODELS_DIR=/runpod-volume/models
	else
		WORKER_MODELS_DIR="$PWD/models"
	fi
fi
export WORKER_MODELS_DIR
export WORKER_ENGINE_PID_FILE="${WORKER_ENGINE_PID_FILE:-/tmp/engine.pid}"
export PYTHONUNBUFFERED=1

# --- where A1111 finds things -----------------------------------------------------------------------
# One layout, derived from the folders the engine command below passes to A1111, so the image's
# extension and baked models land where A1111 looks (A1111 v1.10.1's rules, checked by
# tests/deploy/test_layout.py and, on the real A1111, by tests/a1111/test_start_sh.py):
#   --data-dir D       user extensions load from D/extensions only (modules/paths_internal.py);
#                      A1111's own models folder is D/models
#   checkpoints        D/models/Stable-diffusion and --ckpt-dir (the volume) are both scanned
#   LoRAs              only --lora-dir (the volume) and --lyco-dir-backcompat, which is set to D/models/Lora
#   VAEs               D/models/VAE and --vae-dir (the volume) are both scanned
#   embeddings         only --embeddings-dir (the volume): nothing can be baked
A1111_EXTENSIONS_DIR="$A1111_DATA_DIR/extensions"
A1111_OWN_MODELS_DIR="$A1111_DATA_DIR/models"
# ControlNet's annotator (preprocessor) weights on the volume; not inside ControlNet/, whose files it lists
CONTROLNET_ANNOTATORS_DIR="$WORKER_MODELS_DIR/ControlNet-annotators"
declare -A BAKED_DIRS=(
	[checkpoints]="$A1111_OWN_MODELS_DIR/Stable-diffusion"
	[loras]="$A1111_OWN_MODELS_DIR/Lora"
	[vae]="$A1111_OWN_MODELS_DIR/VAE"
)

print_layout() {
	printf 'A1111_EXTENSIONS_DIR=%q\n' "$A1111_EXTENSIONS_DIR"
	printf 'A1111_BAKED_CHECKPOINTS_DIR=%q\n' "${BAKED_DIRS[checkpoints]}"
	printf 'A1111_BAKED_LORAS_DIR=%q\n' "${BAKED_DIRS[loras]}"
	printf 'A1111_BAKED_VAE_DIR=%q\n' "${BAKED_DIRS[vae]}"
	printf 'CONTROLNET_ANNOTATORS_DIR=%q\n' "$CONTROLNET_ANNOTATORS_DIR"
}

install_extension() { # SRC [link]: copy (or symlink) an extension folder into A1111's extensions folder
	local src="${1%/}" dest
	[[ -d "$src" ]] || die "--install-extension $src: not a folder"
	dest="$A1111_EXTENSIONS_DIR/$(basename "$src")"
	mkdir -p "$A1111_EXTENSIONS_DIR"
	rm -rf "$dest"
	if [[ "${2:-}" == link ]]; then ln -s "$(cd "$src" && pwd)" "$dest"; else cp -R "$src" "$dest"; fi
	log "extension $(basename "$src") installed in $A1111_EXTENSIONS_DIR"
}

bake_models() { # DIR: move DIR/<kind>/* into the folders A1111 scans besides the volume
	local src="${1%/}" kind found
	[[ -d "$src" ]] || die "--bake-models $src: not a folder"
	if [[ -d "$src/embeddings" ]] && find "$src/embeddings" -type f -print -quit | grep -q .; then
		die "--bake-models: embeddings cannot be baked (A1111 reads only --embeddings-dir, the volume); put them on the volume"
	fi
	for kind in "${!BAKED_DIRS[@]}"; do
		[[ -d "$src/$kind" ]] || continue
		found="$(find "$src/$kind" -type f \( -name '*.safetensors' -o -name '*.ckpt' -o -name '*.pt' \) -print)"
		[[ -n "$found" ]] || continue
		mkdir -p "${BAKED_DIRS[$kind]}"
		while IFS= read -r file; do
			mv -f "$file" "${BAKED_DIRS[$kind]}/"
			log "baked $kind: ${BAKED_DIRS[$kind]}/$(basename "$file")"
			# A1111 reads <stem>.yaml beside a checkpoint as its model config (SD2 v-prediction, custom shapes)
			if [[ -f "${file%.*}.yaml" ]]; then mv -f "${file%.*}.yaml" "${BAKED_DIRS[$kind]}/"; fi
		done <<<"$found"
	done
}

print_only=0
case "${1:-}" in
"") ;;
--print-engine-command) print_only=1 ;;
--print-layout)
	print_layout
	exit 0
	;;
--install-extension)
	install_extension "${2:?--install-extension needs the extension folder}"
	exit 0
	;;
--bake-models)
	bake_models "${2:?--bake-models needs the folder of models to bake}"
	exit 0
	;;
-h | --help)
	sed -n '2,13p' "$0"
	exit 0
	;;
*) die "unknown argument ${1}; see docs/deploying.md" ;;
esac

case "$WORKER_MODE" in serverless | api | local) ;; *) die "WORKER_MODE=$WORKER_MODE: use serverless, api or local" ;; esac
case "$WORKER_EXPOSE_ENGINE" in 0 | 1) ;; *) die "WORKER_EXPOSE_ENGINE=$WORKER_EXPOSE_ENGINE: use 0 or 1" ;; esac
# the worker reads it too: only an exposed engine can be interrupted by someone else (docs/configuration.md)
export WORKER_EXPOSE_ENGINE
[[ "$WORKER_ENGINE_MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "WORKER_ENGINE_MAX_RESTARTS=$WORKER_ENGINE_MAX_RESTARTS: use a whole number"
[[ "$WORKER_ENGINE_PORT" =~ ^[0-9]+$ ]] || die "WORKER_ENGINE_PORT=$WORKER_ENGINE_PORT: use a port number"

if [[ "$WORKER_ENGINE" == auto ]]; then
	if [[ -f "$A1111_DIR/launch.py" ]]; then WORKER_ENGINE=a1111; else WORKER_ENGINE=embedded; fi
fi
case "$WORKER_ENGINE" in a1111 | embedded | external) ;; *) die "WORKER_ENGINE=$WORKER_ENGINE: use auto, a1111, embedded or external" ;; esac
# the worker holds a job to the rules of the engine in use (e.g. converting a PEFT LoRA that A1111 would skip)
export WORKER_ENGINE

if [[ "$WORKER_ENGINE" == external ]]; then
	[[ -n "${WORKER_A1111_URL:-}" ]] || die "WORKER_ENGINE=external needs WORKER_A1111_URL (the engine's address)"
	unset WORKER_ENGINE_PID_FILE # not our process: nothing to watch
else
	export WORKER_A1111_URL="${WORKER_A1111_URL:-http://127.0.0.1:${WORKER_ENGINE_PORT}}"
fi

bind_host=127.0.0.1
if [[ "$WORKER_EXPOSE_ENGINE" == 1 ]]; then
	[[ "$WORKER_ENGINE" == a1111 ]] || die "WORKER_EXPOSE_ENGINE=1 is only supported for A1111 (the embedded engine has no authentication)"
	# every comma-separated pair needs a user and a password: ":", "user:" or " : " would expose an open engine,
	# and A1111 splits each pair on every ":" (a second one stops it at start)
	credential='[^:,]*[^:,[:space:]][^:,]*'
	[[ "$A1111_API_AUTH" =~ ^$credential:$credential(,$credential:$credential)*$ ]] || die "WORKER_EXPOSE_ENGINE=1 needs A1111_API_AUTH=user:password (each non-blank, no ':' or ',' inside); refusing to expose an unauthenticated engine"
	bind_host=0.0.0.0
	export WORKER_A1111_AUTH="${WORKER_A1111_AUTH:-$A1111_API_AUTH}"
fi

# Where the engine listens and who may call it is decided above and nowhere else (docs/deploying.md, threat
# model): extra arguments that bind other interfaces, change the port or the credentials are refused, including
# argparse abbreviations of them (A1111's parser accepts "--list" for "--listen") and A1111's COMMANDLINE_ARGS.
refuse_bind_args() {
	local source="$1" protected="$2" exact="$3" arg word flag
	shift 3
	for arg in "$@"; do
		word="${arg//[\"\']/}"
		word="${word%%=*}"
		[[ "$word" == --?* ]] || continue
		[[ " $exact " == *" $word "* ]] && continue # a flag of its own, not an abbreviation
		for flag in $protected; do
			if [[ "$flag" == "$word"* ]]; then
				die "$source contains $arg: where the engine listens and its credentials ($flag) are set by start.sh alone (WORKER_ENGINE_PORT, WORKER_EXPOSE_ENGINE=1 with A1111_API_AUTH); see the threat model in docs/deploying.md"
			fi
		done
	done
}

# --- ControlNet and ADetailer (docs/extensions.md) ---------------------------------------------------------
# The image installs them in A1111_OPTIONAL_EXTENSIONS_DIR; each is linked into A1111's extensions folder at start
# unless A1111_DISABLED_EXTENSIONS names it. A1111 loads every folder there, and --disable-extra-extensions
# would drop worker-routes too: not linking is how an installed one stays unloaded (docs/decisions.md). A data
# dir may also hold them itself (a checkout's, as tests/a1111 links the reference's).
# Their model folders have the worker's registry names (worker/registry/volume.py KIND_DIRS). A flag is passed
# only when its extension is loaded: A1111 refuses arguments no loaded extension declares.
#   ControlNet   --controlnet-dir (its models/ folder and <models>/ControlNet are scanned as well)
#   ADetailer    reads only <models>/adetailer: linked to the volume's folder when nothing is baked there;
#                --ad-no-huggingface, or it tries to download its default detectors at every start
A1111_OPTIONAL_EXTENSIONS_DIR="${A1111_OPTIONAL_EXTENSIONS_DIR:-}"
A1111_DISABLED_EXTENSIONS="${A1111_DISABLED_EXTENSIONS:-}"
declare -A OPTIONAL_EXTENSIONS=([controlnet]=sd-webui-controlnet [adetailer]=adetailer)

extension_disabled() { [[ ",${A1111_DISABLED_EXTENSIONS// /}," == *",$1,"* ]]; }

check_disabled_extensions() { # every name known; none that start.sh cannot leave out
	local names name own
	IFS=, read -r -a names <<<"${A1111_DISABLED_EXTENSIONS// /}"
	for name in "${names[@]}"; do
		[[ -n "${OPTIONAL_EXTENSIONS[$name]+x}" ]] ||
			die "A1111_DISABLED_EXTENSIONS=$A1111_DISABLED_EXTENSIONS: no extension '$name'; use a comma-separated list of: controlnet, adetailer"
		own="$A1111_EXTENSIONS_DIR/${OPTIONAL_EXTENSIONS[$name]}"
		if [[ -d "$own" && ! -L "$own" ]]; then
			die "A1111_DISABLED_EXTENSIONS names $name but $own is a folder of its own (not a link start.sh made): A1111 would load it; remove it from there"
		fi
	done
}

extension_loaded() { # NAME: A1111 will load it at this start
	local folder="${OPTIONAL_EXTENSIONS[$1]}"
	extension_disabled "$1" && return 1
	[[ -d "$A1111_EXTENSIONS_DIR/$folder" ]] ||
		[[ -n "$A1111_OPTIONAL_EXTENSIONS_DIR" && -d "$A1111_OPTIONAL_EXTENSIONS_DIR/$folder" ]]
}

link_optional_extensions() {
	local name folder link
	for name in "${!OPTIONAL_EXTENSIONS[@]}"; do
		folder="${OPTIONAL_EXTENSIONS[$name]}"
		link="$A1111_EXTENSIONS_DIR/$folder"
		if extension_disabled "$name"; then
			if [[ -L "$link" ]]; then rm -f "$link"; fi
			log "extension $folder left out (A1111_DISABLED_EXTENSIONS)"
		elif [[ -n "$A1111_OPTIONAL_EXTENSIONS_DIR" && -d "$A1111_OPTIONAL_EXTENSIONS_DIR/$folder" ]] &&
			[[ -L "$link" || ! -e "$link" ]]; then
			mkdir -p "$A1111_EXTENSIONS_DIR"
			ln -sfn "$A1111_OPTIONAL_EXTENSIONS_DIR/$folder" "$link"
		fi
	done
}

extension_args() {
	check_disabled_extensions
	if extension_loaded controlnet; then
		# its preprocessors' weights come from the volume, never downloaded at request time
		# (worker/preflight/controlnet_annotators.py ANNOTATORS_FOLDER refuses a unit whose files are missing)
		engine_cmd+=(--controlnet-dir "$WORKER_MODELS_DIR/ControlNet"
			--controlnet-annotator-models-path "$CONTROLNET_ANNOTATORS_DIR")
	fi
	if extension_loaded adetailer; then
		engine_cmd+=(--ad-no-huggingface)
	fi
}

prepare_extension_folders() {
	local own="$A1111_OWN_MODELS_DIR/adetailer"
	link_optional_extensions
	if extension_loaded controlnet; then mkdir -p "$WORKER_MODELS_DIR/ControlNet" "$CONTROLNET_ANNOTATORS_DIR"; fi
	extension_loaded adetailer || return 0
	mkdir -p "$WORKER_MODELS_DIR/adetailer" "$A1111_OWN_MODELS_DIR"
	if [[ -L "$own" || ! -e "$own" ]]; then
		ln -sfn "$WORKER_MODELS_DIR/adetailer" "$own"
	else
		log "WARNING: $own is a folder of its own: ADetailer will not see $WORKER_MODELS_DIR/adetailer"
	fi
}

# --- upscaler and interrogation models on the volume (docs/registry.md, docs/api.md) -----------------
# Same folder names as the registry (worker/registry/volume.py KIND_DIRS, worker/registry/upscalers.py).
#   upscalers    --esrgan-models-path: every .pt/.pth below it, any spandrel family, listed by stem; the
#                other families' flags point at its sub-folders, where A1111's built-in names ("R-ESRGAN 4x+",
#                "DAT x4") find their file instead of downloading it. Listed once, at start.
#   interrogate  CLIP: --clip-models-path (ViT-L-14.pt); BLIP and DeepBooru read only <models>/BLIP and
#                <models>/torch_deepdanbooru, linked to the volume's folders unless the image baked its own
#   restore_faces --codeformer-models-path, --gfpgan-models-path (facexlib's detector and parser go there too)
tool_model_args() {
	engine_cmd+=(--esrgan-models-path "$WORKER_MODELS_DIR/upscalers"
		--realesrgan-models-path "$WORKER_MODELS_DIR/upscalers/RealESRGAN"
		--swinir-models-path "$WORKER_MODELS_DIR/upscalers/SwinIR"
		--dat-models-path "$WORKER_MODELS_DIR/upscalers/DAT"
		--clip-models-path "$WORKER_MODELS_DIR/CLIP"
		--codeformer-models-path "$WORKER_MODELS_DIR/Codeformer" --gfpgan-models-path "$WORKER_MODELS_DIR/GFPGAN")
}

prepare_tool_folders() {
	local folder own
	mkdir -p "$WORKER_MODELS_DIR"/upscalers/{RealESRGAN,SwinIR,DAT} "$WORKER_MODELS_DIR"/{CLIP,Codeformer,GFPGAN} \
		"$A1111_OWN_MODELS_DIR"
	for folder in BLIP torch_deepdanbooru; do
		own="$A1111_OWN_MODELS_DIR/$folder"
		mkdir -p "$WORKER_MODELS_DIR/$folder"
		if [[ -L "$own" || ! -e "$own" ]]; then
			ln -sfn "$WORKER_MODELS_DIR/$folder" "$own"
		else
			log "$own is baked into the image: A1111 reads it, not $WORKER_MODELS_DIR/$folder"
		fi
	done
}

# --- the engine command -----------------------------------------------------------------------------
engine_cmd=()
shown_cmd=()
if [[ "$WORKER_ENGINE" == a1111 ]]; then
	[[ -f "$A1111_DIR/launch.py" ]] || die "WORKER_ENGINE=a1111 but $A1111_DIR/launch.py does not exist (set A1111_DIR)"
	if [[ -z "$A1111_PYTHON" ]]; then
		if [[ -x "$A1111_DIR/venv/bin/python" ]]; then A1111_PYTHON="$A1111_DIR/venv/bin/python"; else A1111_PYTHON=python3; fi
	fi
	engine_cmd=("$A1111_PYTHON" -u "$A1111_DIR/launch.py"
		--api --nowebui --port "$WORKER_ENGINE_PORT" --server-name "$bind_host"
		--xformers --opt-sdp-attention --no-half-vae
		--skip-prepare-environment --skip-install --no-download-sd-model
		--skip-version-check --skip-python-version-check
		--data-dir "$A1111_DATA_DIR"
		--ckpt-dir "$WORKER_MODELS_DIR/checkpoints" --lora-dir "$WORKER_MODELS_DIR/loras"
		--lyco-dir-backcompat "${BAKED_DIRS[loras]}"
		--embeddings-dir "$WORKER_MODELS_DIR/embeddings" --vae-dir "$WORKER_MODELS_DIR/vae")
	extension_args
	tool_model_args
	# The registry records every model's sha256, so A1111 need not re-hash multi-GB files on each boot.
	[[ "$A1111_NO_HASHING" == 1 ]] && engine_cmd+=(--no-hashing)
	shown_cmd=("${engine_cmd[@]}")
	if [[ "$WORKER_EXPOSE_ENGINE" == 1 ]]; then
		engine_cmd+=(--api-auth "$A1111_API_AUTH")
		shown_cmd+=(--api-auth '<redacted>')
	fi
	a1111_protected="--listen --server-name --share --ngrok --port --api-auth"
	read -r -a from_env <<<"${COMMANDLINE_ARGS:-}" # A1111 appends COMMANDLINE_ARGS to its own arguments
	refuse_bind_args COMMANDLINE_ARGS "$a1111_protected" "--api" "${from_env[@]}"
	if [[ -n "$A1111_EXTRA_ARGS" ]]; then
		read -r -a extra <<<"$A1111_EXTRA_ARGS"
		refuse_bind_args A1111_EXTRA_ARGS "$a1111_protected" "--api" "${extra[@]}"
		for arg in "${extra[@]}"; do
			case "$arg" in
			--disable-safe-unpickle | --allow-code | --api-server-stop | --enable-insecure-extension-access)
				log "WARNING: A1111_EXTRA_ARGS contains $arg, which weakens the engine's security (docs/deploying.md)"
				;;
			esac
		done
		engine_cmd+=("${extra[@]}")
		shown_cmd+=("${extra[@]}")
	fi
elif [[ "$WORKER_ENGINE" == embedded ]]; then
	engine_cmd=("$PYTHON" -m diffusers_server serve --models-dir "$WORKER_MODELS_DIR"
		--host "$bind_host" --port "$WORKER_ENGINE_PORT")
	if [[ -n "$WORKER_EMBEDDED_EXTRA_ARGS" ]]; then
		read -r -a extra <<<"$WORKER_EMBEDDED_EXTRA_ARGS"
		# the embedded engine has no authentication at all: it only ever listens on the loopback
		refuse_bind_args WORKER_EMBEDDED_EXTRA_ARGS "--host --port" "" "${extra[@]}"
		engine_cmd+=("${extra[@]}")
	fi
	shown_cmd=("${engine_cmd[@]}")
fi

if [[ "$print_only" == 1 ]]; then
	if [[ "$WORKER_ENGINE" == external ]]; then
		echo "# external engine at ${WORKER_A1111_URL}: nothing to start"
	else
		printf '%q ' "${shown_cmd[@]}"
		echo
	fi
	exit 0
fi

# --- pre-flight -------------------------------------------------------------------------------------
gpu_preflight() {
	[[ "$WORKER_SKIP_GPU_CHECK" == 1 ]] && return 0
	if ! command -v nvidia-smi >/dev/null 2>&1; then
		die "A1111 needs an NVIDIA GPU but nvidia-smi is not available. On RunPod choose a GPU worker type; " \
			"without a GPU run the embedded engine (WORKER_ENGINE=embedded); WORKER_SKIP_GPU_CHECK=1 skips this check"
	fi
	local gpus
	if ! gpus="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1)"; then
		die "nvidia-smi failed (${gpus//$'\n'/ }): the GPU or its driver is unusable; ask RunPod for another worker"
	fi
	log "GPU: ${gpus//$'\n'/; }"
}

prepare_models_dir() {
	mkdir -p "$WORKER_MODELS_DIR"/{checkpoints,loras,embeddings,vae}
	if [[ "$WORKER_ENGINE" == embedded ]] &&
		! find "$WORKER_MODELS_DIR/checkpoints" -maxdepth 2 -type f \( -name '*.safetensors' -o -name '*.ckpt' \) -print -quit | grep -q .; then
		log "no checkpoint in $WORKER_MODELS_DIR/checkpoints: writing tiny demo models (random weights: images are noise)"
		"$PYTHON" -m diffusers_server make-demo-models "$WORKER_MODELS_DIR"
	fi
}

log "mode=$WORKER_MODE engine=$WORKER_ENGINE models=$WORKER_MODELS_DIR engine_url=${WORKER_A1111_URL}"
# The image installs the extension at build time (--install-extension); a checkout links its own copy.
ensure_extension() {
	local bundled
	bundled="$(cd "$(dirname "$0")" && pwd)/webui_extensions/worker-routes"
	[[ -e "$A1111_EXTENSIONS_DIR/worker-routes" ]] && return 0
	if [[ -d "$bundled" ]]; then
		install_extension "$bundled" link
	else
		log "WARNING: no worker-routes extension in $A1111_EXTENSIONS_DIR: /worker/v1/* will answer 404"
	fi
}

if [[ "$WORKER_ENGINE" == a1111 ]]; then
	gpu_preflight
	mkdir -p "$A1111_DATA_DIR"
	ensure_extension
	prepare_extension_folders
	prepare_tool_folders
fi
[[ "$WORKER_ENGINE" == external ]] || prepare_models_dir

# --- supervision ------------------------------------------------------------------------------------
engine_pid=""
worker_pid=""
stopping=0

# Each engine line as soon as it is written (not awk: mawk, Debian's and Ubuntu's awk, holds piped input back
# in 4 KB blocks, so A1111's log reached RunPod minutes late), the credentials replaced literally (a quoted
# pattern) wherever A1111 echoes its arguments.
prefix_engine_output() {
	local line
	while IFS= read -r line || [[ -n "$line" ]]; do
		[[ -n "$A1111_API_AUTH" ]] && line="${line//"$A1111_API_AUTH"/<redacted>}"
		printf '[engine] %s\n' "$line"
	done
}

start_engine() {
	"${engine_cmd[@]}" > >(prefix_engine_output) 2>&1 &
	engine_pid=$!
	printf '%s\n' "$engine_pid" >"$WORKER_ENGINE_PID_FILE.tmp"
	mv -f "$WORKER_ENGINE_PID_FILE.tmp" "$WORKER_ENGINE_PID_FILE"
	log "engine started (pid $engine_pid): ${shown_cmd[*]}"
}

start_worker() {
	local cmd=()
	case "$WORKER_MODE" in
	serverless) cmd=("$PYTHON" -m worker) ;;
	local) cmd=("$PYTHON" -m worker --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port "$WORKER_LOCAL_API_PORT") ;;
	api)
		# A1111 runs in its own Python (pydantic 1); its extension forwards /worker/v1 job routes here.
		[[ "$WORKER_ENGINE" == a1111 ]] || return 0
		cmd=("$PYTHON" -m worker.routes_server --host 127.0.0.1 --port "$WORKER_ROUTES_PORT")
		;;
	esac
	"${cmd[@]}" &
	worker_pid=$!
	log "worker started (pid $worker_pid): ${cmd[*]}"
}

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

stop_all() {
	local pid waited=0
	for pid in $worker_pid $engine_pid; do kill -TERM "$pid" 2>/dev/null || true; done
	while alive "$worker_pid" || alive "$engine_pid"; do
		if ((waited >= WORKER_STOP_TIMEOUT_S * 10)); then
			log "children still running after ${WORKER_STOP_TIMEOUT_S} s: killing them"
			for pid in $worker_pid $engine_pid; do kill -KILL "$pid" 2>/dev/null || true; done
			break
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	for pid in $worker_pid $engine_pid; do wait "$pid" 2>/dev/null || true; done
	rm -f "${WORKER_ENGINE_PID_FILE:-}" # unset for an external engine
}

on_signal() {
	[[ "$stopping" == 1 ]] && return
	stopping=1
	log "received $1: stopping engine and worker"
	stop_all
	log "stopped"
	exit 0
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

[[ "$WORKER_ENGINE" == external ]] || start_engine
start_worker

restarts=0
while true; do
	if [[ -n "$worker_pid" ]] && ! alive "$worker_pid"; then
		rc=0
		wait "$worker_pid" || rc=$?
		worker_pid=""
		log "worker exited with status $rc: stopping the engine"
		stop_all
		exit "$rc"
	fi
	if [[ -n "$engine_pid" ]] && ! alive "$engine_pid"; then
		rc=0
		wait "$engine_pid" || rc=$?
		engine_pid=""
		if ((restarts >= WORKER_ENGINE_MAX_RESTARTS)); then
			log "engine exited with status $rc after $restarts restart(s) (WORKER_ENGINE_MAX_RESTARTS=$WORKER_ENGINE_MAX_RESTARTS): giving up"
			stop_all
			exit 1
		fi
		restarts=$((restarts + 1))
		log "engine exited with status $rc: restart $restarts of $WORKER_ENGINE_MAX_RESTARTS"
		sleep "$restarts"
		start_engine
	fi
	sleep 0.2
done
