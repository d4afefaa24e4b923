# leafnet serving image: the Caddy proxy (the only listener, on $PORT) in front of TorchServe serving one
# leafnet archive as the model `leafnet` on loopback, configured for Cloud Run by default (docs/docker.md,
# docs/security.md).
#   docker build -f docker/serve.Dockerfile -t leafnet-serve .
#   docker run --rm -p 8080:8080 leafnet-serve
#   curl -X POST http://127.0.0.1:8080/predictions/leafnet -T leaf.png
# The build context is the repository root; .dockerignore keeps it to what the images need. The archive
# must exist before the build: `make demo` or `dvc repro` writes it, `dvc pull` fetches it.
# tests/test_docker.py lints this file with hadolint and runs its ENTRYPOINT/CMD and HEALTHCHECK on the host
# from the files its COPY lines place (no Docker engine runs where the tests run).

# A patch-level tag: rebuilds get the same Python and Debian release until someone bumps it here.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a virtual environment with TorchServe, the proxy and what the handler imports, nothing else ----
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
# tini is PID 1 (a bare PID 1 ignores signals it has no handler for) and forwards `docker stop`'s and Cloud
# Run's SIGTERM to the supervisor alone, not to the whole group: the supervisor stops the proxy first, lets
# the requests in flight finish, and only then stops TorchServe.
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
# PORT: Cloud Run sets it; the proxy (profiles/proxy/cloudrun.Caddyfile) listens on it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8080
# TorchServe writes logs/ (and, with token authorization on, key_file.json) into its working directory,
# so /app belongs to the user; the files below stay root's and read-only to it. The profiles (leafnet/profiles,
# its two folders as they are) name their own files relative to themselves, which the supervisor resolves.
WORKDIR /app
COPY leafnet/profiles/torchserve/ profiles/torchserve/
COPY leafnet/profiles/proxy/ profiles/proxy/
# Standard library only: the image has no leafnet package, the handler comes inside the archive.
COPY leafnet/serving/supervisor.py supervisor.py
# Last: a new model rebuilds only this layer.
COPY ${MODEL_ARCHIVE} model_store/leafnet.mar

USER 10001:10001
EXPOSE 8080
# Liveness: /ping through the proxy, which opens its port only once TorchServe's workers have loaded the
# model, and answers 502 when TorchServe stops answering. No credentials: every profile leaves /ping open.
# Python, not curl (not in the slim image); exec form, reading $PORT itself: it follows the proxy's port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('PORT', '8080'), timeout=4)"]
# The supervisor runs TorchServe and the proxy and lives as long as both do. CMD picks the profile, e.g.
#   --ts-config profiles/torchserve/gce.properties --proxy-config profiles/proxy/gce.Caddyfile
ENTRYPOINT ["tini", "--", "python", "supervisor.py", "--model-store", "model_store", "--models", "leafnet=leafnet.mar"]
CMD ["--ts-config", "profiles/torchserve/cloudrun.properties", "--proxy-config", "profiles/proxy/cloudrun.Caddyfile"]
