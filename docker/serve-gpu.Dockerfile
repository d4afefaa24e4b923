# leafnet GPU serving image: docker/serve.Dockerfile's server (the Caddy proxy on $PORT in front of TorchServe,
# the Cloud Run profile by default) on an NVIDIA CUDA base, with the CUDA build of torch, serving the TorchScript
# archive on the GPU (docs/docker.md, docs/gpu.md). Not yet built or run on a GPU.
#   docker build -f docker/serve-gpu.Dockerfile -t leafnet-serve-gpu .
#   docker run --rm --gpus all -p 8080:8080 leafnet-serve-gpu
#   curl -X POST http://127.0.0.1:8080/predictions/leafnet -T leaf.png
# The build context is the repository root; .dockerignore keeps it to what the images need. The archive
# (model_store/leafnet.mar, TorchScript) must exist before the build: `make demo`, `dvc repro` or `dvc pull`.
# How the model gets the GPU: TorchServe counts GPUs from CUDA_VISIBLE_DEVICES or, unset, from nvidia-smi,
# which the NVIDIA container toolkit mounts because the base image asks for the `utility` capability. With a
# GPU counted, each worker is given one (round robin) and the handler loads the model on cuda:<id>; with none,
# on the CPU. The handler's log line says which: "leafnet: loaded model.ts.pt on cuda:0 ...".
# tests/test_docker.py lints this file with hadolint and runs its ENTRYPOINT/CMD and HEALTHCHECK on the host
# (on the host's CPU: no GPU is there) from the files its COPY lines place.

# CUDA 12.8: its torch wheels run on drivers from 525 on (CUDA's minor version compatibility), Cloud Run's
# L4 driver (535, CUDA 12.2) and Container-Optimized OS's default drivers among them; a CUDA 13 build needs 580.
# The base flavour brings no CUDA libraries (torch's nvidia-* wheels carry them), only the settings the NVIDIA
# container toolkit and Google's runtimes read: NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES=compute,utility,
# and PATH and LD_LIBRARY_PATH through /usr/local/nvidia, where GKE and Container-Optimized OS mount the driver.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04
# uv installs a standalone CPython of the exact version the CPU images run: Ubuntu 22.04's python3.11 is an early 3.11.0.
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.21

FROM ${UV_IMAGE} AS uv

# ---- builder: Python and a virtual environment with TorchServe, the proxy and what the handler imports ----
FROM ${CUDA_IMAGE} AS builder
ARG PYTHON_VERSION=3.11.14
# The CUDA wheel index, and the local version label torch must carry (the check below fails the build otherwise).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VARIANT=cu128
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only the two requirement files: this layer (the slow one) is rebuilt when they change, not when code does.
COPY requirements.lock docker/serve-requirements.txt /tmp/build/
# As in serve.Dockerfile: torch==2.14.1 from the lock matches 2.14.1+cu128 too (PEP 440), and pip takes the higher
# local version from TORCH_INDEX_URL. The lock's nvidia-* pins are CUDA 13's packages; CUDA 12.8's (nvidia-*-cu12)
# are pinned exactly by that torch wheel itself.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -c /tmp/build/requirements.lock -r /tmp/build/serve-requirements.txt \
    && python -c "import sys, torch; v = torch.__version__; sys.exit(None if v.endswith('+' + sys.argv[1]) else f'torch {v} is not the +{sys.argv[1]} build: check TORCH_INDEX_URL')" "${TORCH_VARIANT}"

# ---- runtime: the CUDA base, a Java 17 runtime for TorchServe's frontend, Python and the venv, one archive ----
FROM ${CUDA_IMAGE}
# Which archive to serve: the TorchScript one, which runs on CUDA (ONNX archives run on onnxruntime's CPU provider).
ARG MODEL_ARCHIVE=model_store/leafnet.mar
ARG VERSION=dev
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="leafnet-serve-gpu" \
      org.opencontainers.image.description="TorchServe serving a leafnet leaf-species classifier on an NVIDIA GPU at /predictions/leafnet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}"

# Ubuntu's packages follow jammy's security updates, so they are not pinned to versions the archive drops: the
# base image tag fixes the release. tini is PID 1, as in serve.Dockerfile (SIGTERM to the supervisor alone).
# man1 must exist for the JRE's update-alternatives on minimal images; noninteractive: tzdata asks no question.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid (USER below names it by number: Kubernetes' runAsNonRoot can only verify a number).
RUN useradd --no-log-init --create-home --uid 10001 --user-group leafnet \
    && install -d -o leafnet -g leafnet /app

# The venv's python is a link into /opt/python: both keep their builder paths.
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
# PATH keeps the base image's /usr/local/nvidia/bin (nvidia-smi, which TorchServe asks for the GPUs where the
# driver is mounted there). NVIDIA_DISABLE_REQUIRE: the base image's NVIDIA_REQUIRE_CUDA (CUDA 12.8 or a listed
# driver branch) would make the container toolkit refuse older drivers, which torch's CUDA 12.8 wheels run on.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    NVIDIA_DISABLE_REQUIRE=1
WORKDIR /app
COPY leafnet/profiles/torchserve/ profiles/torchserve/
COPY leafnet/profiles/proxy/ profiles/proxy/
# Standard library only: the image has no leafnet package, the handler comes inside the archive.
COPY leafnet/serving/supervisor.py supervisor.py
# Last: a new model rebuilds only this layer.
COPY ${MODEL_ARCHIVE} model_store/leafnet.mar

USER 10001:10001
EXPOSE 8080
# As serve.Dockerfile: /ping through the proxy, no credentials, Python reading $PORT itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('PORT', '8080'), timeout=4)"]
ENTRYPOINT ["tini", "--", "python", "supervisor.py", "--model-store", "model_store", "--models", "leafnet=leafnet.mar"]
CMD ["--ts-config", "profiles/torchserve/cloudrun.properties", "--proxy-config", "profiles/proxy/cloudrun.Caddyfile"]
