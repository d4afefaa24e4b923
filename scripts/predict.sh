#!/usr/bin/env bash
# Classify one image with the running TorchServe: scripts/predict.sh leaf.png
# TS_URL overrides the address (default: the proxy scripts/serve.sh starts, http://127.0.0.1:$PORT);
# TS_TOKEN is sent as the bearer token (the GCE profile's proxy wants one).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/torchserve.sh
image=${1:-}
[ -n "$image" ] || { echo "usage: scripts/predict.sh image.png" >&2; exit 2; }
# Relative paths are the caller's: resolve before the cd above mattered, via OLDPWD.
case "$image" in /*) ;; *) image="$OLDPWD/$image" ;; esac
[ -f "$image" ] || { echo "error: $image not found" >&2; exit 2; }
url=${TS_URL:-$(proxy_url)}
curl -sS --fail-with-body -X POST "$url/predictions/leafnet" -H @<(auth_header) \
  -H "Content-Type: application/octet-stream" --data-binary "@$image"
echo
