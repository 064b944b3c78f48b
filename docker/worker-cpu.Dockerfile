# syntax=docker/dockerfile:1
# Worker for the `cpu` work pool: runs batch-generate (plan, dispatch shards to the gpu pool, CLIP
# scoring, reports) and watch-inbox. Build from the repository root:
#   docker build -f docker/worker-cpu.Dockerfile -t vqclip/worker-cpu:0.1.0 .
# The build context is filtered by docker/worker-cpu.Dockerfile.dockerignore.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Same version as the server image in docker/compose.yaml: workers and server speak one API.
ARG PREFECT_VERSION=3.9.1
# The torch of the GPU image (pytorch/pytorch:2.5.1-...), as CPU-only wheels.
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VQCLIP_PROJECT_DIR=/opt/vqclip \
    VQCLIP_CACHE_DIR=/cache \
    VQCLIP_DEVICE=cpu

# PyPI's default torch wheel bundles several GB of CUDA libraries this pool never uses.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
 && python -c "import torch, torchvision; print(f'torch=={torch.__version__}'); print(f'torchvision=={torchvision.__version__}')" \
      > /etc/torch-constraints.txt

WORKDIR /opt/vqclip

# Dependencies first, against empty packages, so that editing the code does not reinstall them;
# the constraints keep the CPU torch above.
COPY pyproject.toml README.md ./
RUN mkdir -p vqclip flows tasks \
 && touch vqclip/__init__.py flows/__init__.py tasks/__init__.py \
 && pip install -c /etc/torch-constraints.txt . "prefect==${PREFECT_VERSION}" \
 && rm -rf vqclip flows tasks build ./*.egg-info

# The code: installed, and kept here for the deployments' file entrypoints (VQCLIP_PROJECT_DIR);
# deployments/ is what the compose init service applies with `prefect deploy`.
COPY vqclip ./vqclip
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
RUN pip install -c /etc/torch-constraints.txt --no-deps --force-reinstall . \
 && rm -rf build ./*.egg-info

RUN useradd --create-home --uid 10001 --user-group vqclip \
 && mkdir -p /cache \
 && chown vqclip:vqclip /cache
VOLUME /cache
USER 10001:10001

ENTRYPOINT ["/usr/bin/tini", "--"]
# No --limit: batch and watch runs mostly wait on the API and on shards. Add one if CLIP scoring
# of several batches at once saturates this machine.
CMD ["prefect", "worker", "start", "--pool", "cpu"]
