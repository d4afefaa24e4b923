#!/usr/bin/env bash
# Local serving: scripts/serve.sh start|stop|status [variant] [key=value ...] is `leafnet serve ...`
# (leafnet/commands/serve.py, leafnet/server.py): the Caddy proxy on http://127.0.0.1:$PORT in front of
# TorchServe on loopback, both run by leafnet/serving/supervisor.py; `stop` lets requests in flight finish.
#   variant: torchscript (default, model_store/leafnet.mar) or another served export, e.g. onnx-int8
#   (model_store/leafnet-onnx-int8.mar). Either way the model answers at /predictions/leafnet.
# Environment, kept from before the command existed: TS_CONFIG (ts_config=), PROXY_CONFIG (proxy_config=),
#   MODEL_STORE (model_store=), LOG_LOCATION (log_dir=), READY_TIMEOUT (ready_timeout_s=), PORT (port=).
# Run from the repository root, as it always was: relative paths (model_store, runs/torchserve) are the checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3

action=${1:-}
[ $# -eq 0 ] || shift
options=()
case "${1:-}" in "" | *=*) ;; *) options+=("variant=$1"); shift ;; esac
for pair in ts_config=TS_CONFIG proxy_config=PROXY_CONFIG model_store=MODEL_STORE log_dir=LOG_LOCATION \
  ready_timeout_s=READY_TIMEOUT port=PORT; do
  name=${pair#*=}
  [ -z "${!name:-}" ] || options+=("${pair%%=*}=${!name}")
done
# ${a[@]+...}: an empty array under set -u, in bash 3.2 (macOS) as well
exec "$python" -m leafnet serve ${action:+"$action"} ${options[@]+"${options[@]}"} "$@"
