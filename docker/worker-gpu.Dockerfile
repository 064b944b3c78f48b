# syntax=docker/dockerfile:1
# Worker for the `gpu` work pool: CUDA PyTorch plus this project; runs generate-shard flow runs,
# one at a time (one container per GPU). Build from the repository root:
#   docker build -f docker/worker-gpu.Dockerfile -t vqclip/worker-gpu:0.1.0 .
# The build context is filtered by docker/worker-gpu.Dockerfile.dockerignore (BuildKit reads
# <Dockerfile>.dockerignore before the context's .dockerignore).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

# Same version as the server image in docker/compose.yaml: workers and server speak one API.
ARG PREFECT_VERSION=3.9.1

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VQCLIP_PROJECT_DIR=/opt/vqclip \
    VQCLIP_CACHE_DIR=/cache \
    VQCLIP_DEVICE=cuda

WORKDIR /opt/vqclip

# Dependencies first, in a layer of their own, against empty packages: editing the code does not
# reinstall them. The constraints keep the base image's CUDA build of torch; a dependency that
# wants another torch fails the build instead of silently swapping in a different wheel.
COPY pyproject.toml README.md ./
RUN python -c "import torch, torchvision; print(f'torch=={torch.__version__}'); print(f'torchvision=={torchvision.__version__}')" \
      > /etc/torch-constraints.txt \
 && mkdir -p vqclip flows tasks \
 && touch vqclip/__init__.py flows/__init__.py tasks/__init__.py \
 && pip install -c /etc/torch-constraints.txt . "prefect==${PREFECT_VERSION}" \
 && rm -rf vqclip flows tasks build ./*.egg-info

# The code: installed as a package, and kept here as well because the deployments' entrypoints
# are files ("flows/shard.py:generate_shard_flow") that the flow run loads from VQCLIP_PROJECT_DIR.
COPY vqclip ./vqclip
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
RUN pip install -c /etc/torch-constraints.txt --no-deps --force-reinstall . \
 && rm -rf build ./*.egg-info

# Model weights live on a volume, so containers share one download and rebuilds keep it.
RUN useradd --create-home --uid 10001 --user-group vqclip \
 && mkdir -p /cache \
 && chown vqclip:vqclip /cache
VOLUME /cache
USER 10001:10001

# tini reaps the flow-run subprocesses the worker starts and forwards signals to the worker.
ENTRYPOINT ["/usr/bin/tini", "--"]
# --limit 1: this worker takes one flow run at a time, i.e. one shard per GPU.
CMD ["prefect", "worker", "start", "--pool", "gpu", "--limit", "1"]
