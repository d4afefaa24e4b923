# leafnet training image: `torchrun --standalone scripts/train.py` with the container's arguments passed through
# as key=value overrides (docs/docker.md). CPU by default; see TORCH_INDEX_URL for CUDA.
#   docker build -f docker/train.Dockerfile -t leafnet-train .
#   docker run --rm --shm-size=1g --user "$(id -u):$(id -g)" \
#     -v "$PWD/data:/app/data:ro" -v "$PWD/runs:/app/runs" leafnet-train schedule.epochs=5
# The build context is the repository root; .dockerignore keeps data, runs and secrets out of it.
# tests/test_docker.py lints this file with hadolint and runs its ENTRYPOINT on the host on tiny data, from
# the files its COPY lines place (no Docker engine runs where the tests run).

# A patch-level tag: rebuilds get the same Python and Debian release until someone bumps it here.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a virtual environment with leafnet and its pinned stack ----
FROM ${PYTHON_IMAGE} AS builder
# CPU wheels by default: a CPU image without CUDA's multi-GB libraries. For NVIDIA GPUs build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 --build-arg TORCH_VARIANT=cu130
# and run with `docker run --gpus all -e PET_NPROC_PER_NODE=gpu`. No CUDA base image is needed: the CUDA
# torch wheels bring the CUDA runtime libraries as nvidia-* wheels (pinned by requirements.lock); the
# driver comes from the host through the NVIDIA container toolkit.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies before source: this layer (the slow one) is rebuilt when pyproject.toml or the lock changes,
# not on every code edit. The dependency list comes from pyproject.toml itself, so it cannot drift.
# requirements.lock says torch==2.14.1 (it was frozen from the CUDA build). A version without a local label
# matches 2.14.1+cpu as well (PEP 440), and with both indexes pip takes the higher 2.14.1+cpu (and
# torchvision 0.29.1+cpu) from TORCH_INDEX_URL over PyPI's CUDA builds. The lock's nvidia-* and triton pins
# are constraints only: CPU wheels do not depend on them, so they are not installed. The check fails the
# build if another torch build got in.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/dependencies.txt \
    && pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -c requirements.lock -r /tmp/dependencies.txt \
    && python -c "import sys, torch; v = torch.__version__; sys.exit(None if v.endswith('+' + sys.argv[1]) else f'torch {v} is not the +{sys.argv[1]} build: check TORCH_INDEX_URL')" "${TORCH_VARIANT}"
# The library itself, a regular (not editable) install: the runtime stage needs no source tree for it.
# README.md and LICENSE because pyproject.toml names them (readme, license-files); setup.cfg holds the
# package discovery and data. The base install: training needs neither the serve nor the pipeline extra.
COPY README.md LICENSE setup.cfg ./
COPY leafnet/ leafnet/
RUN pip install --no-cache-dir --no-deps .

# ---- runtime: Python, the venv, the training entry point and its default config ----
FROM ${PYTHON_IMAGE}
ARG VERSION=dev
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="leafnet-train" \
      org.opencontainers.image.description="Trains a leafnet image classifier: torchrun scripts/train.py key=value ..." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}"

# A fixed non-root uid (USER below names it by number: Kubernetes' runAsNonRoot can only verify a number).
# Runs write runs/<name>/ under the working directory, so /app belongs to the user; with a bind mount pass
# --user "$(id -u):$(id -g)" so the files on the host are yours.
RUN useradd --no-log-init --create-home --uid 10001 --user-group leafnet \
    && install -d -o leafnet -g leafnet /app /app/runs

# Both stages start from PYTHON_IMAGE: the venv's python is a link to that image's /usr/local/bin/python3.11.
COPY --from=builder /opt/venv /opt/venv
# PET_NPROC_PER_NODE is torchrun's own environment form of --nproc_per_node: processes per container,
# a number or gpu/cpu/auto (docker run -e PET_NPROC_PER_NODE=2). One by default: a CPU process already
# uses every core it is given (train.threads=0 splits cores between processes).
# MPLCONFIGDIR: matplotlib (run figures) wants a writable config directory, and a `--user` uid without a
# home has none.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PET_NPROC_PER_NODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
# config/ holds the annotated defaults (a starting point for --config); the other scripts come along for
# `docker run --entrypoint python leafnet-train scripts/evaluate.py ...`.
COPY config/ config/
COPY scripts/ scripts/

USER 10001:10001
# --standalone: a single-node rendezvous on a free local port; arguments after the image name are
# scripts/train.py's key=value overrides. Multi-node jobs override the entrypoint with torchrun's rdzv flags.
ENTRYPOINT ["torchrun", "--standalone", "scripts/train.py"]
CMD []
