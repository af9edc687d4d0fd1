# Project image: the DVC + Ray Train + MLflow pipeline, in two flavours.
#
#   docker build --target cpu -t ghcr.io/genmodels/pipeline:cpu .   # CPU torch (laptops, CI, smoke runs)
#   docker build --target gpu -t ghcr.io/genmodels/pipeline:gpu .   # CUDA torch (GPU Ray workers)
#
# Both flavours share one pinned base, one hash-locked dependency set (requirements.lock, which
# holds everything except torch) and the same project code; they differ only in the torch wheel.
# docs/launch.md#building-and-pinning-the-project-image says how to push and pin the result.
#
# Base image: python:3.11-slim-bookworm, pinned to the multi-arch index digest of the
# 3.11.17 release (the newest 3.11 digest found; recorded as `python:3.11.17-slim-bookworm@sha256:
# 2333bd33...` by several public repositories, one of which checked the OCI index for
# linux/amd64 + linux/arm64 and ran Python 3.11.17 from it). Refresh with
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and change the digest below.
#
# Why the GPU flavour is not built FROM rayproject/ray or pytorch/pytorch:
# - the project locks Python 3.11 (cp311 wheels); pytorch/pytorch:2.13.0-cuda*-runtime ships
#   Python 3.12, so the lock would not install on it;
# - no published digest of rayproject/ray:2.60.0-py311-gpu could be verified, and an older Ray
#   image would carry a second Ray (conda) beside the locked ray==2.60.0;
# - the CUDA torch wheels from the PyTorch index bundle the CUDA runtime, cuDNN and NCCL as
#   nvidia-* wheels, and the driver comes from the host through the NVIDIA container toolkit,
#   so no CUDA base image is needed. One base also means one OS layer to patch and scan.

# ---------------------------------------------------------------------------------------------
# base: OS packages and the unprivileged user, shared by every stage
# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm@sha256:2333bd330d12de02514770b3585cad313644316047cdee24a7acfdece6de6efb AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# wget: KubeRay's default liveness/readiness probes of Ray pods call it. rsync and ssh: `ray up`
# copies files into the container with `rsync -e 'docker exec'`, and the autoscaler on the head
# container reaches worker nodes over SSH. Versions are bookworm's current ones.
# User app is uid/gid 1000; the runtime stages say `USER 1000:1000` numerically so that
# Kubernetes' runAsNonRoot can verify it. /app belongs to it: the pipeline writes its outputs
# (data/, models/, metrics/, ...) there. /workspace is the mount point of the run folder shared
# by all Ray nodes (compose volume, Kubernetes PVC); a fresh Docker volume inherits its owner.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        wget=1.21.3-1+deb12u1 \
        rsync=3.5.0+ds1-0+deb12u1 \
        openssh-client=1:9.2p1-2+deb12u10 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 app \
    && useradd --uid 1000 --gid app --create-home --shell /bin/bash app \
    && install -d -o 1000 -g 1000 /app /workspace

# ---------------------------------------------------------------------------------------------
# deps-*: a virtual environment in /opt/venv, copied whole into the runtime stages
# ---------------------------------------------------------------------------------------------
FROM base AS deps-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.lock /tmp/requirements.lock
# torch is installed by version from the PyTorch index (its wheel hash differs per platform and
# build, so it cannot live in the hash-locked file); everything else is hash-checked.
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-deps --require-hashes -r /tmp/requirements.lock \
    && pip check

FROM base AS deps-gpu
ARG TORCH_VERSION=2.13.0
# CUDA 12.6 build (the CUDA runtime comes inside the nvidia-* wheels; any CUDA 12 driver works
# through minor-version compatibility). For hosts with a CUDA 13 driver: --build-arg TORCH_INDEX_URL=.../cu130.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
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
COPY --chown=1000:1000 . /app
USER 1000:1000
CMD ["dvc", "repro"]

# ---------------------------------------------------------------------------------------------
# cpu: CPU torch; the default target
# ---------------------------------------------------------------------------------------------
FROM base AS cpu
COPY --from=deps-cpu /opt/venv /opt/venv
WORKDIR /app
COPY --chown=1000:1000 . /app
USER 1000:1000
CMD ["dvc", "repro"]
