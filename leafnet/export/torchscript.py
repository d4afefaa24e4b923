"""TorchScript exports: traced, checked at a second batch size, frozen.

torch.jit (and torch.ao.quantization) are deprecated in torch 2.14, but TorchServe still serves
TorchScript; their deprecation warnings are silenced here so users see only what concerns them.
The path forward is torch.export + AOTInductor (docs/export.md).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from leafnet.errors import LeafnetError

_DEPRECATIONS = (
    r"`torch\.jit\.\w+` is deprecated",
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
)


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message)
        yield


def _trace(model: nn.Module, example: torch.Tensor, what: str) -> torch.jit.ScriptModule:
    """Traces at `example`'s batch size and checks the trace at one more image, so a batch size baked
    into the graph (a reshape with a constant) fails here rather than in the server."""
    check = torch.cat([example, example[:1]])
    try:
        with quiet_deprecations(), torch.no_grad():
            traced = torch.jit.trace(model.eval(), example, check_inputs=[(check,)], check_tolerance=1e-4)
            return torch.jit.freeze(traced.eval())
    except Exception as error:  # tracing failures come as many exception types with long messages
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LeafnetError(f"cannot trace the model to {what}: {first}") from None


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    traced = _trace(model, example, "TorchScript")
    with quiet_deprecations():
        traced.save(str(path))


def export_dynamic_quantized_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Linear layers with int8 weights, quantized on the fly at run time (torch's dynamic
    quantization covers Linear/RNN layers only; convolutions stay fp32)."""
    with quiet_deprecations():
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
    traced = _trace(quantized, example, "dynamically quantized TorchScript")
    with quiet_deprecations():
        traced.save(str(path))


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with quiet_deprecations():
        module = torch.jit.load(str(path), map_location="cpu").eval()
        # A quantized graph warns once, from C++, on its first run, where Python filters cannot reach;
        # creating one quantized tensor here spends that one warning while it is filtered.
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)
    return module
