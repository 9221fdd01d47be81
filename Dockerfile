# syntax=docker/dockerfile:1
# psp-toolkit images; usage in docs/deployment.md, section "Docker". One recipe, two flavours:
#   GPU, for clusters (default):  docker build -t psp-toolkit .
#   CPU, for inference only:      docker build --build-arg FLAVOR=cpu -t psp-toolkit:cpu .
# Every RUN is a plain command that also works outside Docker. The Python install is `make setup`:
# the same requirements.lock and the same pip commands, into the venv /opt/venv.

ARG FLAVOR=cuda
# CUDA *devel* (nvcc, for our ops) of the same CUDA as the pinned torch wheel (torch 2.14.1+cu130).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04
ARG CPU_IMAGE=python:3.11-slim
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.11.7

FROM ${UV_IMAGE} AS uv

# ---- system layer, GPU: CUDA 13.0 toolkit, C++ toolchain and ninja (torch's extension builder) ----
FROM ${CUDA_IMAGE} AS cuda-system
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential ninja-build ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Ubuntu 24.04 has no Python 3.11 package: use uv's standalone CPython 3.11 (relocatable, with the
# headers that extension builds need), then a plain `python -m venv` as `make setup` does.
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed
RUN uv python install 3.11 \
 && "$(uv python find 3.11)" -m venv /opt/venv

# ---- system layer, CPU: the official Python 3.11 image; ops run as the pure-PyTorch reference ----
FROM ${CPU_IMAGE} AS cpu-system
RUN python3.11 -m venv /opt/venv

# ---- the application (same for both flavours) ----
FROM ${FLAVOR}-system AS app
ARG FLAVOR
ARG APP_UID=1000
# GPU architectures our CUDA ops are compiled for at build time: A100 8.0, A10/RTX 30 8.6,
# L4/L40/RTX 40 8.9, H100 9.0, plus 9.0 PTX that newer GPUs JIT-compile on first load (same default
# as `python -m stylegan2.ops build`). Add e.g. 10.0 (B200) or 12.0 (RTX 50) with --build-arg.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    TORCH_EXTENSIONS_DIR=/opt/torch_extensions \
    PSP_WEIGHTS_DIR=/checkpoints
WORKDIR /app

# Dependencies first, so this layer is rebuilt only when requirements.lock changes.
COPY requirements.lock /app/
RUN python -m pip install --upgrade pip \
 && python -m pip install -r requirements.lock \
 && python -m pip install --no-deps facenet-pytorch==2.6.0

COPY . /app
RUN python -m pip install --no-deps --no-build-isolation -e .

# Non-root user owning the mount points and the extension cache. The base Ubuntu image has a user
# `ubuntu` with uid 1000: remove it so APP_UID (default 1000, the usual first user) is free.
# Relative paths in configs (checkpoints/NAME, runs/...) are linked to the mounts.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --create-home --uid "${APP_UID}" --shell /bin/bash psp \
 && mkdir -p /data /checkpoints /runs "${TORCH_EXTENSIONS_DIR}" \
 && chown psp:psp /data /checkpoints /runs "${TORCH_EXTENSIONS_DIR}" \
 && docker/link-mounts.sh /app /checkpoints /runs
USER psp

# Prebuild our CUDA ops (no GPU needed: TORCH_CUDA_ARCH_LIST says what to compile for). Loading a
# prebuilt extension still takes a lock file and runs ninja in the cache, so it stays writable for
# whatever uid the cluster runs the container as.
RUN if [ "${FLAVOR}" = cuda ]; then python -m stylegan2.ops build; fi \
 && chmod -R a+rwX "${TORCH_EXTENSIONS_DIR}"

VOLUME ["/data", "/checkpoints", "/runs"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["--help"]
