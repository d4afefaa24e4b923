# leafnet serving image: TorchServe serving one leafnet archive as the model `leafnet`, configured for
# Cloud Run by default (docs/docker.md).
#   docker build -f docker/serve.Dockerfile -t leafnet-serve .
#   docker run --rm -p 8080:8080 leafnet-serve
#   curl -X POST http://127.0.0.1:8080/predictions/leafnet -T leaf.png
# The build context is the repository root; .dockerignore keeps it to what the images need. The archive
# must exist before the build: `make demo` or `dvc repro` writes it, `dvc pull` fetches it.
# tests/test_docker.py lints this file with hadolint and runs its ENTRYPOINT/CMD and HEALTHCHECK on the host
# from the files its COPY lines place (no Docker engine runs where the tests run).

# A patch-level tag: rebuilds get the same Python and Debian release until someone bumps it here.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a virtual environment with TorchServe and what the handler imports, nothing else ----
FROM ${PYTHON_IMAGE} AS builder
# The CPU wheel index keeps CUDA's multi-GB libraries out of a CPU image; the handler runs on CPU.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only the two requirement files: this layer (the slow one) is rebuilt when they change, not when code does.
COPY requirements.lock docker/serve-requirements.txt /tmp/build/
# requirements.lock says torch==2.14.1 (it was frozen from the CUDA build). A version without a local label
# matches 2.14.1+cpu as well (PEP 440), and with both indexes pip takes the higher 2.14.1+cpu from
# TORCH_INDEX_URL over PyPI's CUDA build. The lock's nvidia-* and triton pins are constraints only:
# the CPU wheel does not depend on them, so they are not installed. The check fails the build if another
# torch build got in.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -c /tmp/build/requirements.lock -r /tmp/build/serve-requirements.txt \
    && python -c "import sys, torch; v = torch.__version__; sys.exit(None if v.endswith('+' + sys.argv[1]) else f'torch {v} is not the +{sys.argv[1]} build: check TORCH_INDEX_URL')" "${TORCH_VARIANT}"

# ---- runtime: Python, a Java 17 runtime for TorchServe's frontend, the venv, the config, one archive ----
FROM ${PYTHON_IMAGE}
# Which archive to serve, a path in the build context: leafnet.mar (TorchScript) or another served variant.
ARG MODEL_ARCHIVE=model_store/leafnet-onnx-int8.mar
ARG VERSION=dev
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="leafnet-serve" \
      org.opencontainers.image.description="TorchServe serving a leafnet leaf-species classifier at /predictions/leafnet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}"

# Debian's packages follow bookworm's security updates, so they are not pinned to versions that the archive
# drops: the base image tag fixes the release. man1 must exist for the JRE's update-alternatives on slim images.
# tini is PID 1: it forwards `docker stop`'s and Cloud Run's SIGTERM to the whole process group (-g), so the
# launcher, the Java frontend and its Python workers stop together. A bare PID 1 ignores SIGTERM unless it
# installs a handler, and TorchServe's launcher does not: `docker stop` would wait 10 s and SIGKILL.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid (USER below names it by number: Kubernetes' runAsNonRoot can only verify a number).
RUN useradd --no-log-init --create-home --uid 10001 --user-group leafnet \
    && install -d -o leafnet -g leafnet /app

# Both stages start from PYTHON_IMAGE: the venv's python is a link to that image's /usr/local/bin/python3.11.
COPY --from=builder /opt/venv /opt/venv
# PORT: Cloud Run sets it; cloudrun.properties listens on $$PORT$$, which TorchServe fills from it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8080
# TorchServe writes logs/ (and, with token authorization on, key_file.json) into its working directory,
# so /app belongs to the user; the files below stay root's and read-only to it. The profiles name
# config/torchserve/metrics.yaml and log4j2.xml relative to the working directory.
WORKDIR /app
COPY config/torchserve/ config/torchserve/
# Last: a new model rebuilds only this layer.
COPY ${MODEL_ARCHIVE} model_store/leafnet.mar

USER 10001:10001
EXPOSE 8080
# Liveness: /ping answers 200 once the frontend is up (a few seconds before the worker has loaded the model)
# and 500 once a worker has failed to recover for maxRetryTimeoutInSec (TorchServe's default: 300 s).
# Python, not curl (not in the slim image); exec form, reading $PORT itself: it follows the server's port.
# With token authorization on (GCE profile) even /ping wants the inference key: the check sends the one of
# the key_file.json TorchServe writes into the working directory.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import json, os, urllib.request as u; k = json.load(open('key_file.json'))['inference']['key'] if os.path.exists('key_file.json') else ''; u.urlopen(u.Request('http://127.0.0.1:%s/ping' % os.environ.get('PORT', '8080'), headers={'Authorization': 'Bearer ' + k} if k else {}), timeout=4)"]
# --foreground: the launcher waits on the Java frontend, so the container lives as long as the server.
# The archive is always served as `leafnet`; CMD picks the profile, e.g. config/torchserve/gce.properties.
ENTRYPOINT ["tini", "-g", "--", "torchserve", "--start", "--foreground", "--ncs", "--model-store", "model_store", "--models", "leafnet=leafnet.mar"]
CMD ["--ts-config", "config/torchserve/cloudrun.properties"]
