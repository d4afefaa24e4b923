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
from leafnet.serving.runtime import onnx_session, split_outputs

# float32 NCHW batch -> float32 logits [batch, classes]
Predictor = Callable[[np.ndarray], np.ndarray]
# float32 NCHW batch -> (logits, out-of-distribution scores or None: a model without them)
OutputsPredictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def torch_outputs(model: nn.Module | torch.jit.ScriptModule) -> OutputsPredictor:
    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            result = model(torch.from_numpy(np.ascontiguousarray(batch)))
        return split_outputs([result] if isinstance(result, torch.Tensor) else list(result))

    return predict


def onnx_outputs(session: ort.InferenceSession) -> OutputsPredictor:
    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return split_outputs(session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}))

    return predict


def load_outputs(path: Path, threads: int = 0) -> OutputsPredictor:
    """Both outputs of an exported file, chosen by its suffix (.onnx or TorchScript .pt)."""
    if path.suffix == ".onnx":
        return onnx_outputs(onnx_session(path, threads))
    return torch_outputs(load_torchscript(path))


def logits_only(outputs: OutputsPredictor) -> Predictor:
    return lambda batch: outputs(batch)[0]


def torch_predictor(model: nn.Module | torch.jit.ScriptModule) -> Predictor:
    return logits_only(torch_outputs(model))


def load_predictor(path: Path, threads: int = 0) -> Predictor:
    """The logits of an exported file, chosen by its suffix (.onnx or TorchScript .pt)."""
    return logits_only(load_outputs(path, threads))
