#!/usr/bin/env bash
# usage: scripts/deploy_cloudrun.sh [--dry-run] [options]
#
# Deploys the leafnet serve image (TorchServe, Cloud Run profile) as a Cloud Run service that only
# callers with roles/run.invoker can reach, then prints how to call it with an identity token.
# .github/workflows/deploy.yml runs it for each release; docs/deploy.md has the setup.
# Every option can come from the environment variable beside it; an option beats the variable.
#
#   --project P          PROJECT        Google Cloud project (required)
#   --region R           REGION         Cloud Run and Artifact Registry region (us-central1)
#   --service S          SERVICE        Cloud Run service name (leafnet)
#   --image URI          IMAGE          image to deploy (default: the one .github/workflows/image.yml pushes,
#                                       REGION-docker.pkg.dev/PROJECT/REPOSITORY/leafnet-serve:IMAGE_TAG;
#                                       with --gpu, leafnet-serve-gpu:IMAGE_TAG, built by hand: docs/gpu.md)
#   --repository NAME    REPOSITORY     Artifact Registry repository (leafnet)
#   --image-tag TAG      IMAGE_TAG      image tag: a commit SHA, or main for main's latest (main)
#   --cpu N              CPU            vCPUs per instance (2; 4 with --gpu, Cloud Run's minimum with an L4)
#   --memory SIZE        MEMORY         memory per instance (2Gi; 16Gi with --gpu, Cloud Run's minimum with an L4)
#   --gpu N              GPU            GPUs per instance (none; Cloud Run attaches at most 1): serves the GPU image
#                                       on it, with CPU always allocated (--no-cpu-throttling), as GPUs require
#   --gpu-type TYPE      GPU_TYPE       GPU model with --gpu (nvidia-l4); only some regions have GPUs (docs/gpu.md)
#   --no-gpu-zonal-redundancy           no capacity kept in reserve in other zones: cheaper, best-effort failover
#   --concurrency N      CONCURRENCY    requests per instance at once (2 x maxWorkers x batchSize of MODEL_CONFIG)
#   --min-instances N    MIN_INSTANCES  instances kept warm (1)
#   --max-instances N    MAX_INSTANCES  scaling limit (3)
#   --timeout T          TIMEOUT        request timeout (2 x responseTimeout of MODEL_CONFIG, in s)
#   --service-account SA RUN_SERVICE_ACCOUNT  identity the service runs as (Cloud Run's default if empty)
#   --dry-run                           print the gcloud commands, one per line, and run nothing
#   -h, --help
#
# MODEL_CONFIG (leafnet/serving/model-config.yaml) is the archive's TorchServe model config.
set -euo pipefail
here=${BASH_SOURCE[0]%/*}
[[ ${BASH_SOURCE[0]} == */* ]] || here=.
# shellcheck source=scripts/lib/deploy.sh
source "$here/lib/deploy.sh" # --help prints the comment above; work from the repository root

# Reads a top-level `KEY: <whole number>` of the model config (its keys are flat).
model_config_count() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ $line =~ ^$2:[[:space:]]*([0-9]+)([[:space:]]|$) ]]; then
      printf '%s\n' "${BASH_REMATCH[1]}"
      return 0
    fi
  done <"$1"
  die "no '$2: <number>' in $1"
}

OPTIONS=(--project:PROJECT --region:REGION --service:SERVICE --image:IMAGE --repository:REPOSITORY
  --image-tag:IMAGE_TAG --cpu:CPU --memory:MEMORY --concurrency:CONCURRENCY --min-instances:MIN_INSTANCES
  --max-instances:MAX_INSTANCES --timeout:TIMEOUT --service-account:RUN_SERVICE_ACCOUNT --gpu:GPU
  --gpu-type:GPU_TYPE)
SWITCHES=(--no-gpu-zonal-redundancy:NO_GPU_ZONAL_REDUNDANCY)
parse_options "$@"

require PROJECT --project
REGION=${REGION:-us-central1}
SERVICE=${SERVICE:-leafnet}
REPOSITORY=${REPOSITORY:-leafnet}
IMAGE_TAG=${IMAGE_TAG:-main}
IMAGE_NAME=leafnet-serve
if [ -n "${GPU:-}" ]; then
  require_count GPU --gpu
  [ "$GPU" -ge 1 ] || die "--gpu must be at least 1 (leave it out for a CPU service), got '$GPU'"
  GPU_TYPE=${GPU_TYPE:-nvidia-l4}
  IMAGE_NAME=leafnet-serve-gpu
  # Cloud Run's minimum resources for an instance with an L4 (other GPU types need more: docs/gpu.md).
  CPU=${CPU:-4}
  MEMORY=${MEMORY:-16Gi}
elif [ -n "${GPU_TYPE:-}" ] || [ "${NO_GPU_ZONAL_REDUNDANCY:-}" = 1 ]; then
  die "--gpu-type and --no-gpu-zonal-redundancy need --gpu N"
fi
CPU=${CPU:-2}
MEMORY=${MEMORY:-2Gi}
MIN_INSTANCES=${MIN_INSTANCES:-1}
MAX_INSTANCES=${MAX_INSTANCES:-3}
MODEL_CONFIG=${MODEL_CONFIG:-leafnet/serving/model-config.yaml}
[ -f "$MODEL_CONFIG" ] || die "model config $MODEL_CONFIG not found (MODEL_CONFIG)"
batch_size=$(model_config_count "$MODEL_CONFIG" batchSize)
workers=$(model_config_count "$MODEL_CONFIG" maxWorkers)
min_workers=$(model_config_count "$MODEL_CONFIG" minWorkers)
# The handler splits the cores by maxWorkers and TorchServe starts minWorkers: they must agree.
[ "$min_workers" = "$workers" ] ||
  die "minWorkers and maxWorkers differ in $MODEL_CONFIG: leafnet runs a fixed number of workers, set both"
response_timeout=$(model_config_count "$MODEL_CONFIG" responseTimeout)
startup_timeout=$(model_config_count "$MODEL_CONFIG" startupTimeout)
# Each of the maxWorkers TorchServe workers fuses up to batchSize queued requests into one forward pass.
# Twice that many in flight keeps every worker's next batch queued while one runs, so batches fill without
# waiting for maxBatchDelay; more would only queue inside TorchServe and add latency, where Cloud Run can
# send the excess to another instance instead.
CONCURRENCY=${CONCURRENCY:-$((2 * workers * batch_size))}
# Longer than TorchServe's own responseTimeout, so a stuck batch ends with TorchServe's error (and a worker
# restart) rather than Cloud Run cutting the connection first.
TIMEOUT=${TIMEOUT:-$((2 * response_timeout))s}
# Traffic only once /ping answers Healthy over HTTP, not merely once the port accepts connections (Cloud
# Run's default TCP probe). /ping turns Healthy when the frontend is up, a few seconds before the worker has
# loaded the model; requests in that gap queue, they do not fail. The window is the worker's
# startupTimeout plus 30 s for the JVM.
probe_period=2
probe_failures=$(((startup_timeout + 30) / probe_period))
startup_probe="httpGet.path=/ping,httpGet.port=8080,periodSeconds=$probe_period,timeoutSeconds=$probe_period"
startup_probe+=",failureThreshold=$probe_failures"
require_count CONCURRENCY --concurrency
# One worker per vCPU is what docs/serving.md measured for the CPU image; on a GPU the workers share the GPU.
if [ -z "${GPU:-}" ] && [ "$CPU" != "$workers" ]; then
  echo "warning: --cpu $CPU but $MODEL_CONFIG runs $workers workers: set minWorkers/maxWorkers to the vCPU count" >&2
fi
require_count MIN_INSTANCES --min-instances
require_count MAX_INSTANCES --max-instances
require_gcloud
image=$(serve_image)

check_image "$image"
# --port: the container's PORT (the image's default, 8080); Cloud Run sets PORT to it and the Cloud Run
#   profile listens on $$PORT$$.
# --min-instances 1: a cold start launches the JVM and the Python workers and loads the model (seconds), so one
#   instance stays warm; 0 costs nothing when idle and makes the first request wait.
# --cpu-boost: more CPU while an instance starts, which is when TorchServe needs it most.
# --no-allow-unauthenticated: IAM checks a Google identity token (roles/run.invoker) before a request
#   reaches the container; the Cloud Run profile has TorchServe's own token authorization off.
deploy=(gcloud run deploy "$SERVICE" --project "$PROJECT" --region "$REGION" --image "$image"
  --port 8080 --cpu "$CPU" --memory "$MEMORY" --concurrency "$CONCURRENCY"
  --min-instances "$MIN_INSTANCES" --max-instances "$MAX_INSTANCES" --timeout "$TIMEOUT"
  --startup-probe "$startup_probe" --cpu-boost --no-allow-unauthenticated)
[ -z "${RUN_SERVICE_ACCOUNT:-}" ] || deploy+=(--service-account "$RUN_SERVICE_ACCOUNT")
if [ -n "${GPU:-}" ]; then
  # --no-cpu-throttling: Cloud Run attaches GPUs only to instances whose CPU is always allocated (instance-based
  #   billing: a minimum instance costs its GPU even when idle).
  # CUDA_VISIBLE_DEVICES=0: TorchServe counts GPUs from it, or from nvidia-smi when unset; Cloud Run's one GPU is
  #   index 0, and naming it keeps the model off the CPU even where nvidia-smi is not on the PATH.
  deploy+=(--gpu "$GPU" --gpu-type "$GPU_TYPE" --no-cpu-throttling --update-env-vars CUDA_VISIBLE_DEVICES=0)
  [ "${NO_GPU_ZONAL_REDUNDANCY:-}" != 1 ] || deploy+=(--no-gpu-zonal-redundancy)
fi
run "${deploy[@]}"
url=""
capture url gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" \
  --format 'value(status.url)'

[ -z "${GPU:-}" ] || note "$GPU_TYPE GPUs run in a few Cloud Run regions only, each with its own GPU quota (docs/gpu.md)."
note "Cloud Run serves $image as $SERVICE at $url; only callers with roles/run.invoker get through:"
note "  curl -X POST -H \"Authorization: Bearer \$(gcloud auth print-identity-token)\" $url/predictions/leafnet -T leaf.png"
note "Let someone call it:"
note "  $(command_line gcloud run services add-iam-policy-binding "$SERVICE" --project "$PROJECT" --region "$REGION" \
  --member user:EMAIL --role roles/run.invoker)"
