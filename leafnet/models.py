"""timm model factory: any architecture by name, a local pretrained weights file, no downloads."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import timm
import torch
from torch import nn

from leafnet.errors import LeafnetError
from leafnet.pretrained import load_pretrained, preprocess_overrides


@dataclass
class ModelConfig:
    name: str = "resnet10t"  # any timm architecture; a tag (resnet50.a1_in1k) picks that release's preprocessing
    # a local weights file to start from: model.safetensors, pytorch_model.bin, .pth, .pth.tar or a leafnet
    # checkpoint (docs/finetune.md); never a download; a classifier for other classes is re-initialised
    pretrained: str | None = None
    pretrained_strict: bool = True  # fail when tensors besides the classifier do not fit; false = load what fits
    weights: str | None = None  # the former name of model.pretrained (same meaning)
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPU and tensor-core GPUs
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth (timm's drop_path_rate), e.g. 0.1 to fine-tune a large model
    compile: bool = False  # torch.compile the model


def _unknown_model(name: str) -> LeafnetError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    return LeafnetError(f"unknown model {name!r}{hint}")


def pretrained_file(config: ModelConfig) -> str | None:
    """model.pretrained, or the same file under its former name model.weights."""
    if config.pretrained and config.weights and config.pretrained != config.weights:
        raise LeafnetError("model.weights is the former name of model.pretrained: set one of them")
    return config.pretrained or config.weights or None


def model_preprocessing(
    config: ModelConfig, normalize: str = "auto", interpolation: str | None = None, crop_pct: float | None = None
) -> dict:
    """The model's part of the preprocessing spec (leafnet.pretrained.preprocess_overrides): the backbone's
    mean, std, interpolation and crop_pct when normalising as it was trained, else only what the user set."""
    if not timm.is_model(config.name):
        raise _unknown_model(config.name)
    return preprocess_overrides(config.name, pretrained_file(config), normalize, interpolation, crop_pct)


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
    if not timm.is_model(config.name):
        raise _unknown_model(config.name)
    kwargs = {"drop_path_rate": config.drop_path_rate} if config.drop_path_rate else {}
    try:
        model = timm.create_model(
            config.name, pretrained=False, num_classes=num_classes, drop_rate=config.drop_rate, **kwargs
        )
    except TypeError as error:  # an architecture without stochastic depth
        if not kwargs:
            raise
        raise LeafnetError(f"{config.name} does not take model.drop_path_rate: {error}") from None
    weights = pretrained_file(config)
    if weights:
        load_pretrained(model, weights, strict=config.pretrained_strict, name=config.name)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    """The trained network of a leafnet checkpoint (EMA weights when the run used EMA), in eval mode."""
    model = timm.create_model(checkpoint["model_name"], pretrained=False, num_classes=checkpoint["num_classes"])
    model.load_state_dict(checkpoint["model"])
    return model.eval()
