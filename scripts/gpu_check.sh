#!/usr/bin/env bash
# The GPU check: scripts/gpu_check.sh [key=value ...] is `leafnet gpu-check ...` (leafnet/commands/gpu_check.py,
# leafnet/gpu_check/): training (bfloat16; float16 with channels_last and torch.compile), torchrun with nccl,
# evaluation, export, TorchScript and onnxruntime on the GPU against eager and the CPU, and the serving handler on
# the GPU, on small generated data in about 5 minutes. Writes one JSON file, runs/gpu_check/gpu_check.json unless
# output= says otherwise (docs/gpu.md). Exit status: 0 all ran or were skipped with a reason, 1 a check failed,
# 2 a usage error or no CUDA device (device=cpu runs the same checks on the CPU).
# Run from the repository root, as the other scripts are: relative paths (runs/) are the checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
exec "$python" -m leafnet gpu-check "$@"
