"""timm model factory: any architecture by name, a local weights file, no downloads."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from leafnet.checkpoint import safe_torch_load
from leafnet.errors import LeafnetError


@dataclass
class ModelConfig:
    name: str = "resnet10t"  # any timm architecture
    weights: str | None = None  # a local file (state dict or checkpoint); never a download
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPU and tensor-core GPUs
    drop_rate: float = 0.0  # dropout before the classifier
    compile: bool = False  # torch.compile the model


def _unknown_model(name: str) -> LeafnetError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    return LeafnetError(f"unknown model {name!r}{hint}")


def load_local_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Loads a state dict (or a leafnet/timm checkpoint holding one) with weights_only=True.

    Tensors whose shape does not match (a classifier head trained for other classes) are left at
    their fresh initialisation; the names of those are returned. Any other missing or unexpected key
    is an error: it means the file is for another architecture.
    """
    state = safe_torch_load(path, "model weights file")
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for key in skipped:
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise LeafnetError(
            f"{path} does not fit this architecture: {len(missing)} missing key(s) (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return skipped


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
    if not timm.is_model(config.name):
        raise _unknown_model(config.name)
    model = timm.create_model(config.name, pretrained=False, num_classes=num_classes, drop_rate=config.drop_rate)
    if config.weights:
        load_local_weights(model, config.weights)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    """The trained network of a leafnet checkpoint (EMA weights when the run used EMA), in eval mode."""
    model = timm.create_model(checkpoint["model_name"], pretrained=False, num_classes=checkpoint["num_classes"])
    model.load_state_dict(checkpoint["model"])
    return model.eval()
