#!/usr/bin/env bash
# Classify one image with the running TorchServe: scripts/predict.sh leaf.png
# TS_URL overrides the inference address (default: the one in $TS_CONFIG, else
# config/torchserve/config.properties); TS_TOKEN is sent as the bearer token (else the inference key of
# ./key_file.json, which TorchServe writes when token authorization is on, as in the GCE profile).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/torchserve.sh
image=${1:-}
[ -n "$image" ] || { echo "usage: scripts/predict.sh image.png" >&2; exit 2; }
# Relative paths are the caller's: resolve before the cd above mattered, via OLDPWD.
case "$image" in /*) ;; *) image="$OLDPWD/$image" ;; esac
[ -f "$image" ] || { echo "error: $image not found" >&2; exit 2; }
url=${TS_URL:-$(inference_url "${TS_CONFIG:-config/torchserve/config.properties}")}
mapfile -t auth < <(auth_header)
curl -sS --fail-with-body -X POST "$url/predictions/leafnet" "${auth[@]}" -T "$image"
echo
