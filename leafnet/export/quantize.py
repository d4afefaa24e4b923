"""int8 ONNX variants with onnxruntime's quantization tools.

Both start from the fp32 model after `quant_pre_process` (shape inference + graph optimisation,
which folds BatchNorm into convolutions so one quantized Conv replaces a Conv+BN pair).
- dynamic: weights int8 ahead of time, activations quantized per batch at run time (ConvInteger).
  Compact, but onnxruntime's ConvInteger kernels are slow: docs/export.md shows how slow.
- static: QDQ format, per-channel weights, activation ranges calibrated on training images; the
  variant to serve on CPU.
Both leave the out-of-distribution score, the pooled features it reads and the classifier in fp32
(`score_nodes`): ranges calibrated on training images end near the largest in-distribution value, so a
quantized score would saturate just where images stop looking like the training data, the one place it has
to tell them apart. The backbone's activations stay int8 and clip on such images, so the int8 score of a
far-out image is lower than the fp32 one: its own threshold and export's per-variant measurement (and the
gates.max_auroc_drop gate) account for that.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from leafnet.errors import LeafnetError
from leafnet.export.config import Int8Config
from leafnet.export.onnx_export import INPUT_NAME, OUTPUT_NAME, check_onnx


@contextmanager
def _quiet_onnxruntime_tools() -> Iterator[None]:
    """The quantizer logs advice meant for its developers (e.g. 'please consider pre-processing')
    at WARNING through the root logger; keep it out of the user's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quant_type(name: str) -> QuantType:
    try:
        return QuantType[name]
    except KeyError:
        raise LeafnetError(f"unknown quantization type {name!r}; choose QInt8 or QUInt8") from None


def check_int8_config(config: Int8Config) -> None:
    """Fails on a misspelt type or method before any export work starts."""
    _quant_type(config.activation_type)
    _quant_type(config.weight_type)
    _calibration_method(config.calibration_method)
    if config.calibration_images < 1:
        raise LeafnetError("int8.calibration_images must be at least 1")


def _calibration_method(name: str) -> CalibrationMethod:
    try:
        return CalibrationMethod[name]
    except KeyError:
        choices = ", ".join(m.name for m in CalibrationMethod)
        raise LeafnetError(f"unknown calibration method {name!r}; choose one of {choices}") from None


def preprocess_for_quantization(fp32: Path, out: Path) -> None:
    """quant_pre_process, then a name for every unnamed node: the quantizers leave nodes out by name."""
    import onnx

    with _quiet_onnxruntime_tools():
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=False)
    model = onnx.load(str(out))
    unnamed = [node for node in model.graph.node if not node.name]
    if unnamed:
        taken = {node.name for node in model.graph.node}
        for index, node in enumerate(unnamed):
            node.name = next(
                f"leafnet_{index}_{k}" for k in range(len(taken) + 1) if f"leafnet_{index}_{k}" not in taken
            )
        onnx.save(model, str(out))


def score_nodes(path: Path, logits: str = OUTPUT_NAME) -> list[str]:
    """The nodes to keep in fp32 in the graph at `path`: those the logits do not need (they compute only the
    ood_score of leafnet/export/scored.py), and the nodes producing or reading the tensors the score shares
    with the logits (the pooled features and the classifier), so the score reads the features unrounded.
    Found by walking the graph from the logits, whatever the exporter named the nodes."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    needed, pending = set(), [logits]
    while pending:
        index = producer.get(pending.pop())
        if index is not None and index not in needed:
            needed.add(index)
            pending.extend(nodes[index].input)
    score = {index for index in range(len(nodes)) if index not in needed}
    score_inputs = {tensor for index in score for tensor in nodes[index].input}
    shared = {tensor for index in needed for tensor in nodes[index].input if tensor in score_inputs}
    beside = {index for index in needed if shared & (set(nodes[index].input) | set(nodes[index].output))}
    return [nodes[index].name for index in sorted(score | beside)]


def quantize_onnx_dynamic(prepared: Path, out: Path) -> None:
    # QUInt8 weights: onnxruntime's CPU ConvInteger has no kernel for int8 weights.
    with _quiet_onnxruntime_tools():
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QUInt8, nodes_to_exclude=score_nodes(prepared))
    check_onnx(out)


class _Batches(CalibrationDataReader):
    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_onnx_static(prepared: Path, out: Path, calibration: Iterable[np.ndarray], config: Int8Config) -> None:
    method = _calibration_method(config.calibration_method)
    with _quiet_onnxruntime_tools():
        quantize_static(
            str(prepared),
            str(out),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            activation_type=_quant_type(config.activation_type),
            weight_type=_quant_type(config.weight_type),
            calibrate_method=method,
            reduce_range=config.reduce_range,
            nodes_to_exclude=score_nodes(prepared),
        )
    check_onnx(out)
