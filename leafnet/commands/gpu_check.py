"""Check the CUDA paths in about 5 minutes: `leafnet gpu-check [output=runs/gpu_check/gpu_check.json] [device=cpu]`.

Trains two epochs on generated leaves (bfloat16; float16 with channels_last and torch.compile), trains under
torchrun (nccl, one process per GPU), evaluates, exports, compares TorchScript and onnxruntime on the GPU with
eager and the CPU, and serves a batch through the archive's handler on the GPU. One JSON file holds a section
per check: ok, failed or skipped with a reason, and its timings (docs/gpu.md). Exit status 1 when a check
failed; without a CUDA device, one error line (status 2) unless device=cpu.
"""

from leafnet.config import load_config
from leafnet.gpu_check.config import GpuCheckConfig


def main(argv: list[str]) -> int:
    config = load_config(GpuCheckConfig, argv)
    from leafnet.gpu_check.environment import require_device

    require_device(config.device)  # before the checks' imports: a machine without CUDA hears so at once
    from leafnet.gpu_check.runner import exit_status, run_gpu_check

    return exit_status(run_gpu_check(config))


CONFIG = GpuCheckConfig  # the options and their defaults (`leafnet gpu-check --help` lists them)
