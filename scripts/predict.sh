#!/usr/bin/env bash
# Classify one image with the running TorchServe: scripts/predict.sh leaf.png
# TS_URL overrides the inference address (default: the one in config/torchserve/config.properties).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-}
[ -n "$image" ] || { echo "usage: scripts/predict.sh image.png" >&2; exit 2; }
# Relative paths are the caller's: resolve before the cd above mattered, via OLDPWD.
case "$image" in /*) ;; *) image="$OLDPWD/$image" ;; esac
[ -f "$image" ] || { echo "error: $image not found" >&2; exit 2; }
url=${TS_URL:-$(sed -n 's/^inference_address=//p' "${TS_CONFIG:-config/torchserve/config.properties}")}
curl -sS --fail-with-body -X POST "$url/predictions/leafnet" -T "$image"
echo
