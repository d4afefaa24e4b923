"""Run any exported variant on a batch: one `Predictor` interface over eager, TorchScript and onnxruntime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from leafnet.export.onnx_export import INPUT_NAME
from leafnet.export.torchscript import load_torchscript

# float32 NCHW batch -> float32 logits [batch, classes]
Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: nn.Module | torch.jit.ScriptModule) -> Predictor:
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()

    return predict


def onnx_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads (0: onnxruntime's choice, one per core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optimiser's notes are not for users
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictor(session: ort.InferenceSession) -> Predictor:
    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return predict


def load_predictor(path: Path, threads: int = 0) -> Predictor:
    """A predictor for an exported file, chosen by its suffix (.onnx or TorchScript .pt)."""
    if path.suffix == ".onnx":
        return onnx_predictor(onnx_session(path, threads))
    return torch_predictor(load_torchscript(path))
