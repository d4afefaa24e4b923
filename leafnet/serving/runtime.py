"""The model of an archive behind one call, `logits(batch)`, with threads sized to the CPUs this process
may really use; and the one definition of leafnet's onnxruntime session options."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (containers, Cloud Run),
    which os.cpu_count() ignores: a 2-vCPU container on a 64-core host must not start 64 threads."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs granted by the cgroup quota (v2 cpu.max, else v1 cfs), rounded up; None when unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def onnx_session(path: Path, threads: int = 0, spinning: bool = True):
    """A CPU onnxruntime session with `threads` intra-op threads (0: one per core) and no inter-op pool.
    spinning=False lets idle intra-op threads sleep: a TorchServe worker shares its cores with the
    frontend, which spinning threads would starve; a process alone on its cores is faster spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optimiser's notes are not for users
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Runtime:
    """A TorchScript (`*.pt`) or ONNX (`*.onnx`) model file, run on `device` ("cpu" or "cuda:N"; ONNX on CPU)."""

    def __init__(self, model_file: Path, threads: int, device: str = "cpu", spinning: bool = True) -> None:
        self.session = None
        self.device = "cpu" if model_file.suffix == ".onnx" else device
        if model_file.suffix == ".onnx":
            self.session = onnx_session(model_file, threads, spinning)
            self.input_name = self.session.get_inputs()[0].name
        else:
            import torch

            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
                self.model = torch.jit.load(str(model_file), map_location=self.device).eval()

    @property
    def threads(self) -> int:
        if self.session is not None:
            return self.session.get_session_options().intra_op_num_threads
        import torch

        return torch.get_num_threads()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> float32 logits [batch, classes]."""
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 NCHW batch -> (logits [batch, classes], out-of-distribution scores [batch] or None for a
        model exported before export added them: leafnet/export/scored.py)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.session is not None:
            return split_outputs(self.session.run(None, {self.input_name: batch}))
        import torch

        with torch.inference_mode():
            result = self.model(torch.from_numpy(batch).to(self.device))
            return split_outputs([result] if isinstance(result, torch.Tensor) else list(result))


def split_outputs(outputs: list) -> tuple[np.ndarray, np.ndarray | None]:
    """A model's outputs (numpy arrays or tensors) as (logits, scores or None)."""
    arrays = [np.asarray(o.float().cpu().numpy() if hasattr(o, "cpu") else o, dtype=np.float32) for o in outputs]
    return arrays[0], (arrays[1] if len(arrays) > 1 else None)
