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
from leafnet.serving.runtime import onnx_session

# float32 NCHW batch -> float32 logits [batch, classes]
Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: nn.Module | torch.jit.ScriptModule) -> Predictor:
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()

    return predict


def onnx_predictor(session: ort.InferenceSession) -> Predictor:
    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return predict


def load_predictor(path: Path, threads: int = 0) -> Predictor:
    """A predictor for an exported file, chosen by its suffix (.onnx or TorchScript .pt)."""
    if path.suffix == ".onnx":
        return onnx_predictor(onnx_session(path, threads))
    return torch_predictor(load_torchscript(path))
