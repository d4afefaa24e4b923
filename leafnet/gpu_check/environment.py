"""What the checks ran on: the device (or the refusal to run without one), the libraries, the GPUs."""

from __future__ import annotations

import os
import platform

import torch

from leafnet.errors import LeafnetError

DEVICES = ("cuda", "cpu")


def require_device(device: str) -> None:
    """Refuses, in one line, a device that is not there: the check exists to exercise the GPU."""
    if device not in DEVICES:
        raise LeafnetError(f"device must be cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise LeafnetError(
            f"no CUDA device: torch {torch.__version__} ({build}) sees none; device=cpu runs the same checks on the CPU"
        )


def describe(device: str) -> dict:
    """The machine and the libraries, for the results file."""
    import onnxruntime

    facts = {
        "device": device,
        "ran_on_gpu": device == "cuda",
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "onnxruntime": onnxruntime.__version__,
        },
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "gpus": [],
    }
    if device == "cuda":
        facts["gpus"] = [_gpu(index) for index in range(torch.cuda.device_count())]
        facts["tf32"] = {  # what eager and TorchScript ran with: cuDNN convolutions use TF32 by default
            "cudnn_convolutions": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        }
        facts["nccl"] = _nccl_version()
    return facts


def _nccl_version() -> str | None:
    import torch.distributed

    if not torch.distributed.is_nccl_available():
        return None
    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _gpu(index: int) -> dict:
    properties = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": properties.name,
        "capability": f"{properties.major}.{properties.minor}",
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False)
        if index == torch.cuda.current_device()
        else None,
    }
