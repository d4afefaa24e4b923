#!/usr/bin/env bash
# Local TorchServe: scripts/serve.sh start|stop|status [variant]
#   variant: torchscript (default, model_store/leafnet.mar) or another served export, e.g. onnx-int8
#   (model_store/leafnet-onnx-int8.mar). Either way the model answers at /predictions/leafnet.
# Environment: TS_CONFIG (default config/torchserve/config.properties; gce.properties and
#   cloudrun.properties are the deployment profiles), MODEL_STORE (model_store), LOG_LOCATION
#   (runs/torchserve), READY_TIMEOUT (seconds, 120), PORT (for cloudrun.properties, default 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/torchserve.sh

action=${1:-}
variant=${2:-torchscript}
config=${TS_CONFIG:-config/torchserve/config.properties}
store=${MODEL_STORE:-model_store}
export LOG_LOCATION=${LOG_LOCATION:-runs/torchserve}
export METRICS_LOCATION=${METRICS_LOCATION:-$LOG_LOCATION}
torchserve=.venv/bin/torchserve
[ -x "$torchserve" ] || torchserve=torchserve

[ -f "$config" ] || { echo "error: TorchServe config $config not found" >&2; exit 2; }
export PORT=${PORT:-8080}  # TorchServe fills $$PORT$$ from it (Cloud Run profile)
inference=$(inference_url "$config")
management=$(management_url "$config")
python=.venv/bin/python
[ -x "$python" ] || python=python3

case "$action" in
  start)
    # leafnet.export.naming owns the rule that names archives (export's archive_name and served)
    archive=$("$python" -m leafnet.export.naming "$variant")
    [ -f "$store/$archive" ] || { echo "error: $store/$archive not found: run make export (or scripts/export.py served=[...])" >&2; exit 2; }
    mkdir -p "$LOG_LOCATION"
    # The JVM keeps the launcher's stdout: send it to a file, not a pipe.
    "$torchserve" --start --ncs --ts-config "$config" --model-store "$store" --models "leafnet=$archive" \
      >"$LOG_LOCATION/launcher.log" 2>&1
    deadline=$((SECONDS + ${READY_TIMEOUT:-120}))
    # Ready means every worker has loaded the model, not merely /ping: a benchmark started on Healthy alone
    # would time the workers' start-up.
    # With token authorization on (GCE profile) /ping too wants the inference key of key_file.json.
    until mapfile -t auth < <(auth_header) && curl -sf -m 2 "${auth[@]}" "$inference/ping" | grep -q Healthy &&
      workers_ready "$management" leafnet; do
      if [ $SECONDS -ge $deadline ]; then
        echo "error: TorchServe's workers not ready after ${READY_TIMEOUT:-120}s; see $LOG_LOCATION/model_log.log" >&2
        "$torchserve" --stop >/dev/null 2>&1 || true
        exit 1
      fi
      sleep 1
    done
    echo "TorchServe serves $archive: curl -X POST $inference/predictions/leafnet -T leaf.png"
    if [ -f key_file.json ]; then
      echo "token authorization is on: add -H \"Authorization: Bearer <inference key>\" (keys in $PWD/key_file.json)"
    fi
    ;;
  stop)
    "$torchserve" --stop
    ;;
  status)
    curl -sS -m 5 "$inference/ping" || { echo "TorchServe is not answering at $inference" >&2; exit 1; }
    ;;
  *)
    echo "usage: scripts/serve.sh start|stop|status [variant]" >&2
    exit 2
    ;;
esac
