# RunPod image: CUDA 12.1 + AUTOMATIC1111 v1.10.1 (pinned) + our extension + the worker.
# Everything is installed at build time; start-up installs and downloads nothing (docs/deploying.md).
# Models live on the network volume (/runpod-volume/models); A1111's data and caches stay on local disk.
#
#   docker build -t a1111-worker .
#   docker build --build-arg BAKE_MODEL=<catalogue id> -t a1111-worker:baked .
#
# Every build argument's default is the production build. The offline test build (scripts/build_image.sh,
# docs/deploying.md) changes only the base and its Python, the torch wheels, and where sources come from:
# a folder of git repositories, a Hugging Face cache and models mounted into the build, never copied.
ARG BASE_IMAGE=nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG A1111_REF=v1.10.1
ARG A1111_COMMIT=82a973c04367123ae98bd9abdf80d9eda9b910e2
# The Stability-AI repository was removed (A1111 #17213); w-e-w's mirror keeps the pinned commit.
ARG STABLE_DIFFUSION_REPO=https://github.com/w-e-w/stablediffusion.git
# The commits A1111 v1.10.1's modules/launch_utils.py pins; set explicitly so a change is visible here.
ARG STABLE_DIFFUSION_COMMIT_HASH=cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf
ARG STABLE_DIFFUSION_XL_COMMIT_HASH=45c443b316737a4ab6e40413d7794a7f5657c19f
ARG K_DIFFUSION_COMMIT_HASH=ab527a9a6d347f364e3d185ba6d714e22d80cb3c
ARG BLIP_COMMIT_HASH=48211a1594f1321b00f14c9f7a5b4813144b2fb9
ARG ASSETS_COMMIT_HASH=6f7db241d2f8ba7457bac5ca9753331f0c266917
# torch and xformers as the matching pair A1111 1.10.1 defaults to (cu121 wheels).
ARG TORCH_COMMAND="pip install torch==2.1.2 torchvision==0.16.2 --extra-index-url https://download.pytorch.org/whl/cu121"
ARG XFORMERS_PACKAGE=xformers==0.0.23.post1
# The Python that runs A1111 and the worker (a Debian package name: the venv package is "${PYTHON}-venv").
ARG PYTHON=python3.10
# Offline sources (empty: GitHub and the Hugging Face hub). GIT_SOURCES: a folder holding
# stable-diffusion-webui.git and repositories/<name> (checkouts at the pinned commits, which A1111 keeps);
# HF_CACHE_SEED: a Hugging Face home with openai/clip-vit-large-patch14's tokenizer.
ARG GIT_SOURCES=""
ARG HF_CACHE_SEED=""
# A1111 installs CLIP and open_clip from GitHub archives unless these name other pip requirements.
ARG CLIP_PACKAGE=""
ARG OPENCLIP_PACKAGE=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    A1111_DIR=/opt/a1111 \
    A1111_DATA_DIR=/opt/a1111-data \
    A1111_PYTHON=/opt/a1111/venv/bin/python \
    WORKER_PYTHON=/opt/worker-venv/bin/python \
    WORKER_ENGINE=a1111 \
    WORKER_MODELS_DIR=/runpod-volume/models \
    WORKER_ENGINE_PID_FILE=/tmp/engine.pid \
    HF_HOME=/opt/a1111-data/cache/huggingface \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

# Ubuntu 22.04's python3.10 is A1111 1.10's supported version; versions are those of the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "${PYTHON}" "${PYTHON}-venv" python3-pip git curl ca-certificates \
        libgl1 libglib2.0-0 libgoogle-perftools4 bc \
    && rm -rf /var/lib/apt/lists/*

# A1111 at its release commit (the tag is checked against the commit, so a moved tag fails the build).
# Offline, its repositories are copied in at their commits; launch.py below finds them in place and clones nothing.
RUN if [ -z "${GIT_SOURCES}" ]; then \
        git clone --branch "${A1111_REF}" --depth 1 https://github.com/AUTOMATIC1111/stable-diffusion-webui.git "${A1111_DIR}"; \
    else \
        git clone --branch "${A1111_REF}" --depth 1 "file://${GIT_SOURCES}/stable-diffusion-webui.git" "${A1111_DIR}" \
        && cp -a "${GIT_SOURCES}/repositories" "${A1111_DIR}/repositories"; \
    fi \
    && test "$(git -C "${A1111_DIR}" rev-parse HEAD)" = "${A1111_COMMIT}"

WORKDIR /opt/a1111
# Prepare A1111's environment now (torch, xformers, repositories at their commits, requirements), then exit.
# An empty XFORMERS_PACKAGE leaves xformers out (a CPU test build). Build arguments are in RUN's environment even
# when empty, and launch.py would take an empty CLIP_PACKAGE as the package to install: unset, A1111's default holds.
# ${xformers_flag} is unquoted on purpose: it is one word or none.
# hadolint ignore=SC2086
RUN "${PYTHON}" -m venv venv \
    && export TORCH_COMMAND XFORMERS_PACKAGE STABLE_DIFFUSION_REPO STABLE_DIFFUSION_COMMIT_HASH \
        STABLE_DIFFUSION_XL_COMMIT_HASH K_DIFFUSION_COMMIT_HASH BLIP_COMMIT_HASH ASSETS_COMMIT_HASH \
    && if [ -z "${CLIP_PACKAGE}" ]; then unset CLIP_PACKAGE; fi \
    && if [ -z "${OPENCLIP_PACKAGE}" ]; then unset OPENCLIP_PACKAGE; fi \
    && xformers_flag="" && check="import torch; print('torch', torch.__version__)" \
    && if [ -n "${XFORMERS_PACKAGE}" ]; then \
        xformers_flag="--xformers" \
        && check="import torch, xformers; print('torch', torch.__version__, 'xformers', xformers.__version__)"; \
    fi \
    && venv/bin/python -m pip install --upgrade "pip==24.0" \
    && venv/bin/python launch.py --skip-torch-cuda-test ${xformers_flag} --no-download-sd-model \
        --skip-version-check --data-dir "${A1111_DATA_DIR}" --exit \
    && venv/bin/python -c "${check}"

# CLIP's tokenizer/config that A1111 fetches on the first SD1.5 load, fetched now (HF_HOME is local).
# Offline, the cache is copied from HF_CACHE_SEED and the same loads prove it complete without the hub.
RUN if [ -n "${HF_CACHE_SEED}" ]; then \
        mkdir -p "${HF_HOME}" && cp -a "${HF_CACHE_SEED}/." "${HF_HOME}/" && export HF_HUB_OFFLINE=1; \
    fi \
    && venv/bin/python -c "from transformers import CLIPTokenizer, CLIPTextConfig; \
CLIPTokenizer.from_pretrained('openai/clip-vit-large-patch14'); CLIPTextConfig.from_pretrained('openai/clip-vit-large-patch14')"
# The cache is complete: at start-up A1111 would otherwise ask the hub for the tokenizer's latest revision on
# every load (a request that hangs or fails on a worker without internet access).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# ControlNet and ADetailer (docs/extensions.md), each at its pinned commit, with the Python dependencies their
# install.py would add at start-up, pinned in scripts/extension-requirements/ (the reference A1111's too) under
# A1111's own pins. An empty commit leaves that extension and its dependencies out of the image
# (--build-arg ADETAILER_COMMIT=). They go to A1111_OPTIONAL_EXTENSIONS_DIR, not where A1111 loads extensions:
# start.sh links each one there unless A1111_DISABLED_EXTENSIONS names it (docs/decisions.md). Offline,
# GIT_SOURCES/extensions/<folder> holds each one at its commit. Their git history is not kept (nothing reads it).
# ${lists} is unquoted on purpose: "-r FILE" words, none with a space.
ARG CONTROLNET_COMMIT=56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81
ARG ADETAILER_COMMIT=36189cbea735b85fd01e98ac42002b8ce6f0e41d
ENV A1111_OPTIONAL_EXTENSIONS_DIR=/opt/a1111-extensions
COPY scripts/extension-requirements /tmp/extension-requirements
# hadolint ignore=SC2086
RUN mkdir -p "${A1111_OPTIONAL_EXTENSIONS_DIR}" && lists="" \
    && for entry in "controlnet sd-webui-controlnet Mikubill/sd-webui-controlnet ${CONTROLNET_COMMIT}" \
        "adetailer adetailer Bing-su/adetailer ${ADETAILER_COMMIT}"; do \
        read -r key folder repository commit <<<"${entry}" && [ -n "${commit}" ] || continue; \
        dest="${A1111_OPTIONAL_EXTENSIONS_DIR}/${folder}"; \
        if [ -z "${GIT_SOURCES}" ]; then \
            git init -q "${dest}" \
            && git -C "${dest}" fetch -q --depth 1 "https://github.com/${repository}.git" "${commit}" \
            && git -C "${dest}" checkout -q FETCH_HEAD; \
        else \
            cp -a "${GIT_SOURCES}/extensions/${folder}" "${dest}"; \
        fi \
        && test "$(git -C "${dest}" rev-parse HEAD)" = "${commit}" \
        && rm -rf "${dest}/.git" \
        && lists="${lists} -r /tmp/extension-requirements/${key}.txt" || exit 1; \
    done \
    && if [ -n "${lists}" ]; then \
        venv/bin/python -m pip install -c /tmp/extension-requirements/constraints.txt ${lists}; \
    fi \
    && rm -rf /tmp/extension-requirements

# The worker in its own venv: A1111 pins pydantic 1, the worker (and runpod) need pydantic 2.
# Its dependencies first, from pyproject.toml alone, so a change to worker/ reinstalls only the worker (seconds).
COPY pyproject.toml README.md /opt/worker/
RUN "${PYTHON}" -m venv /opt/worker-venv \
    && /opt/worker-venv/bin/python -m pip install "/opt/worker" \
    && /opt/worker-venv/bin/python -m pip uninstall -y a1111-runpod-worker
# The catalogue is not part of the installed package (its default path is next to a checkout's worker/).
COPY cache_registry.json /opt/worker/
ENV WORKER_CATALOGUE_PATH=/opt/worker/cache_registry.json
COPY worker /opt/worker/worker
# the extension's package: the worker imports its health report (one definition for both)
COPY webui_extensions/worker-routes/a1111_worker_routes /opt/worker/webui_extensions/worker-routes/a1111_worker_routes
RUN /opt/worker-venv/bin/python -m pip install --no-deps "/opt/worker" \
    && /opt/worker-venv/bin/python -c "import runpod, uvicorn, worker.routes"

# start.sh owns the folder layout: the extension and baked models go where the flags it passes make A1111
# look (with --data-dir, A1111 loads extensions only from <data-dir>/extensions); see start.sh --print-layout.
COPY start.sh /start.sh
COPY webui_extensions/worker-routes /tmp/worker-routes
RUN /start.sh --install-extension /tmp/worker-routes && rm -rf /tmp/worker-routes

# A complete config.json: A1111 starts from known settings (the worker sends every setting it manages on every
# job anyway, so it never depends on A1111 restoring them).
COPY scripts/a1111-config.json "${A1111_DATA_DIR}/config.json"

# Optional: a catalogue model in the image, e.g. --build-arg BAKE_MODEL=<id from cache_registry.json>.
# Declared here, not at the top: a build argument is in every later RUN's environment, so a different value
# would rebuild every layer after its declaration (torch and A1111's requirements included).
# BAKE_SOURCE_DIR (offline builds): a folder laid out like the volume where the pull finds the file.
ARG BAKE_MODEL=""
ARG BAKE_SOURCE_DIR=""
# A model A1111 cannot use as it is (a diffusers/PEFT LoRA) is converted here, once, never at request time.
# It lands in A1111's own model folders on local disk, scanned besides the volume (start.sh --bake-models).
RUN if [ -n "${BAKE_MODEL}" ]; then \
        mkdir -p /tmp/bake \
        && if [ -n "${BAKE_SOURCE_DIR}" ]; then cp -a "${BAKE_SOURCE_DIR}/." /tmp/bake/; fi \
        && WORKER_MODELS_DIR=/tmp/bake /opt/worker-venv/bin/python -m worker registry pull "${BAKE_MODEL}" \
        && WORKER_MODELS_DIR=/tmp/bake /opt/worker-venv/bin/python -m worker registry convert "${BAKE_MODEL}" \
            --to a1111 --remove-source \
        && /start.sh --bake-models /tmp/bake \
        && rm -rf /tmp/bake; \
    fi

EXPOSE 3000
# Health is 200 only once the checkpoint is loaded; the start period covers a cold model load.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS http://127.0.0.1:${WORKER_ENGINE_PORT:-3000}/worker/v1/health || exit 1"]

ENTRYPOINT ["/start.sh"]
