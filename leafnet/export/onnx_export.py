"""ONNX export with the torch.onnx dynamo exporter: dynamic batch, one self-contained file, full check."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import onnx
import torch
from torch import nn

from leafnet.errors import LeafnetError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int = 18, output_names: tuple[str, ...] = (OUTPUT_NAME,)
) -> None:
    """Writes `path` with a symbolic batch dimension; weights are embedded (external_data=False:
    the exporter's default writes a separate .onnx.data file that archives and copies lose). `output_names`
    name the model's outputs in order (a scored model has two: leafnet/export/scored.py)."""
    if opset < 18:
        raise LeafnetError(f"opset {opset} is too old: the dynamo exporter needs opset >= 18")
    batch = torch.export.Dim("batch", min=1, max=4096)
    progress = io.StringIO()  # the exporter prints its steps; keep them for the error message only
    try:
        with contextlib.redirect_stdout(progress), torch.no_grad():
            torch.onnx.export(
                model.eval(),
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LeafnetError(f"cannot export the model to ONNX: {first}") from None
    check_onnx(path)


def check_onnx(path: Path) -> None:
    """onnx.checker's full check (with shape inference); a self-contained file is part of the contract."""
    if Path(f"{path}.data").exists():
        raise LeafnetError(f"{path} was written with external data ({path}.data); it must be one file")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise LeafnetError(f"{path} fails onnx.checker: {str(error).splitlines()[0]}") from None
