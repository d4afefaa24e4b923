#!/usr/bin/env bash
# Local serving: scripts/serve.sh start|stop|status [variant]
#   variant: torchscript (default, model_store/leafnet.mar) or another served export, e.g. onnx-int8
#   (model_store/leafnet-onnx-int8.mar). Either way the model answers at /predictions/leafnet.
# What runs is what every deployed profile runs: leafnet/serving/supervisor.py starts TorchServe on loopback
# (127.0.0.1:8085) and, once its workers are ready, the Caddy proxy in front of it on http://127.0.0.1:$PORT,
# the only address clients use; `stop` sends SIGTERM, so requests in flight finish first.
# Environment: TS_CONFIG (default config/torchserve/config.properties), PROXY_CONFIG (default
#   config/proxy/local.Caddyfile), MODEL_STORE (model_store), LOG_LOCATION (runs/torchserve), READY_TIMEOUT
#   (seconds, 120), PORT (the proxy's port, 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/torchserve.sh

action=${1:-}
variant=${2:-torchscript}
config=${TS_CONFIG:-config/torchserve/config.properties}
proxy_config=${PROXY_CONFIG:-config/proxy/local.Caddyfile}
store=${MODEL_STORE:-model_store}
export LOG_LOCATION=${LOG_LOCATION:-runs/torchserve}
export METRICS_LOCATION=${METRICS_LOCATION:-$LOG_LOCATION}
export PORT=${PORT:-8080}
pidfile=$LOG_LOCATION/supervisor.pid
url=$(proxy_url)
python=.venv/bin/python
[ -x "$python" ] || python=python3

[ -f "$config" ] || { echo "error: TorchServe config $config not found" >&2; exit 2; }
[ -f "$proxy_config" ] || { echo "error: proxy config $proxy_config not found" >&2; exit 2; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$action" in
  start)
    running && { echo "error: already serving (supervisor pid $(cat "$pidfile")): scripts/serve.sh stop first" >&2; exit 2; }
    # leafnet.export.naming owns the rule that names archives (export's archive_name and served)
    archive=$("$python" -m leafnet.export.naming "$variant")
    [ -f "$store/$archive" ] || { echo "error: $store/$archive not found: run make export (or scripts/export.py served=[...])" >&2; exit 2; }
    mkdir -p "$LOG_LOCATION"
    # setsid: the servers outlive this script; the JVM keeps its stdout, so a file, not a pipe.
    setsid "$python" leafnet/serving/supervisor.py --ts-config "$config" --proxy-config "$proxy_config" \
      --model-store "$store" --models "leafnet=$archive" --ready-timeout "${READY_TIMEOUT:-120}" \
      --state-dir "$LOG_LOCATION/state" >"$LOG_LOCATION/supervisor.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    deadline=$((SECONDS + ${READY_TIMEOUT:-120} + 10))
    # The proxy starts once every worker has loaded the model: a healthy /ping through it means ready.
    until curl -sf -m 2 "$url/ping" | grep -q Healthy; do
      if ! running || [ $SECONDS -ge $deadline ]; then
        echo "error: not serving after ${READY_TIMEOUT:-120}s; see $LOG_LOCATION/supervisor.log and $LOG_LOCATION/model_log.log" >&2
        tail -5 "$LOG_LOCATION/supervisor.log" >&2 || true
        "$0" stop >/dev/null 2>&1 || true
        exit 1
      fi
      sleep 1
    done
    echo "serving $archive behind the proxy: curl -X POST $url/predictions/leafnet --data-binary @leaf.png"
    ;;
  stop)
    running || { echo "not serving (no live supervisor in $pidfile)"; rm -f "$pidfile"; exit 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    # The proxy drains (its grace period, 8 s, plus 5), then TorchServe stops (20 s at most before the
    # supervisor kills it): allow all of it, then say so.
    for _ in $(seq 90); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "error: supervisor $pid still running 45 s after SIGTERM; see $LOG_LOCATION/supervisor.log" >&2
      exit 1
    fi
    rm -f "$pidfile"
    echo "stopped"
    ;;
  status)
    curl -sS -m 5 "$url/ping" || { echo "nothing answers at $url" >&2; exit 1; }
    ;;
  *)
    echo "usage: scripts/serve.sh start|stop|status [variant]" >&2
    exit 2
    ;;
esac
