"""Fine-tuning controls of a training run (docs/finetune.md): the optimizer's parameter groups (layer-wise
lr decay, the classifier's lr scale), freezing everything but the classifier, and mixup/cutmix.

Parameter groups come from timm (`param_groups_layer_decay`, `param_groups_weight_decay`) and carry an
`lr_scale`, which timm's own schedulers apply and torch's do not: `build_optimizer` bakes each group's
scale into its starting lr, so the run's `LambdaLR` (which multiplies every group's initial lr by one
factor) gives each group `optim.lr x lr_scale x factor(step)`, and a checkpoint carries the scaled lrs.
With every control off the optimizer is exactly the one `create_optimizer_v2` builds from the model.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from leafnet.data.dataset import seeded_rng
from leafnet.errors import LeafnetError
from leafnet.train_config import MixupSection, OptimSection

MIXUP_STREAM = 1  # keeps mixup's seeds apart from every other use of the run's seed


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier: the module(s) timm's `get_classifier()` returns (what `pretrained_cfg["classifier"]`
    names; a distilled model has two heads)."""
    heads = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = [h for h in (heads if isinstance(heads, tuple | list) else (heads,)) if isinstance(h, nn.Module)]
    if not any(True for head in heads for _ in head.parameters()):
        raise LeafnetError(
            f"{type(model).__name__} has no classifier with parameters (timm's get_classifier()); "
            "optim.head_lr_scale and train.freeze_epochs need one"
        )
    return heads


def finetune_groups(model: nn.Module, optim: OptimSection) -> list[dict]:
    """timm's parameter groups (weight decay off for norms and biases; per-layer `lr_scale` when
    `optim.layer_decay`), the classifier's parameters split into groups of their own whose `lr_scale`
    is multiplied by `optim.head_lr_scale`. Every parameter is in exactly one group."""
    no_decay = getattr(model, "no_weight_decay", set)()
    if optim.layer_decay:
        groups = param_groups_layer_decay(
            model, optim.weight_decay, no_weight_decay_list=no_decay, layer_decay=optim.layer_decay
        )
    else:
        groups = [
            {**group, "lr_scale": 1.0}
            for group in param_groups_weight_decay(model, optim.weight_decay, no_weight_decay_list=no_decay)
        ]
    if optim.head_lr_scale == 1.0:
        return groups
    head = {id(p) for module in classifier_modules(model) for p in module.parameters()}
    split = []
    for group in groups:
        trunk = [p for p in group["params"] if id(p) not in head]
        classifier = [p for p in group["params"] if id(p) in head]
        if trunk:
            split.append({**group, "params": trunk})
        if classifier:
            split.append({**group, "params": classifier, "lr_scale": group["lr_scale"] * optim.head_lr_scale})
    return split


FUSED_DEVICES = {"cpu", "cuda"}


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """The run's optimizer over every parameter of `model` (all must require grad: timm's groups skip
    the others, and a frozen parameter still needs its place for when it thaws). Fused (one kernel over all
    parameters instead of a loop of foreach ops) where torch has that kernel for the parameters' device."""
    options = {"lr": optim.lr, "momentum": optim.momentum, **(fused_option(model) if optim.fused else {})}
    if not optim.layer_decay and optim.head_lr_scale == 1.0:
        return create_optimizer_v2(model, optim.name, weight_decay=optim.weight_decay, **options)
    groups = finetune_groups(model, optim)
    for group in groups:
        group["lr"] = optim.lr * group["lr_scale"]  # LambdaLR scales this initial lr, timm's scale included
    # weight_decay=0: every group sets its own, as create_optimizer_v2 leaves it when it builds them.
    return create_optimizer_v2(groups, optim.name, weight_decay=0.0, **options)


def fused_option(model: nn.Module) -> dict:
    """{"fused": True} when every parameter sits on a device where torch has fused AdamW and SGD kernels (the
    two a run trains on: train.device is cpu or cuda); empty otherwise, leaving torch's default (foreach).
    Fused is cheaper per step on both (docs/training.md), the same update up to float rounding."""
    devices = {p.device.type for p in model.parameters()}
    return {"fused": True} if devices and devices <= FUSED_DEVICES else {}


class Freeze:
    """Everything but the classifier, frozen for the first `train.freeze_epochs` epochs.

    Frozen parameters get `requires_grad=False`: the backward pass stops at the classifier (no gradient
    is computed, all-reduced or stepped for the rest, so neither weight decay nor optimizer state touches
    it), and the normalisation layers with running statistics outside the classifier run in eval mode,
    so the frozen part stays exactly the network it was. The caller rebuilds a DDP wrapper after `set`
    changes something: DDP registers the parameters that require grad when it is built.
    """

    def __init__(self, model: nn.Module) -> None:
        heads = classifier_modules(model)
        head_parameters = {id(p) for head in heads for p in head.parameters()}
        head_modules = {id(m) for head in heads for m in head.modules()}
        self.parameters = [p for p in model.parameters() if id(p) not in head_parameters]
        self.norms = [
            m for m in model.modules() if getattr(m, "track_running_stats", False) and id(m) not in head_modules
        ]
        self.total = sum(p.numel() for p in model.parameters())
        self.trainable = self.total - sum(p.numel() for p in self.parameters)  # while frozen
        self.frozen = False

    def set(self, frozen: bool) -> bool:
        """Freezes or thaws; whether anything changed."""
        if frozen == self.frozen:
            return False
        for parameter in self.parameters:
            parameter.requires_grad_(not frozen)
        self.frozen = frozen
        return True

    def eval_norms(self) -> None:
        """Called after `model.train()`: while frozen, the frozen part's running statistics stay put."""
        if self.frozen:
            for module in self.norms:
                module.eval()


def mixing_enabled(mixup: MixupSection) -> bool:
    return (mixup.mixup_alpha > 0 or mixup.cutmix_alpha > 0) and mixup.prob > 0


class Mixer:
    """timm's `Mixup` (per batch) with its random draws seeded by (seed, epoch, batch, rank): a resumed
    epoch mixes its remaining batches exactly as the uninterrupted one, whatever else drew from numpy.
    Returns the mixed images (in place) and soft targets, label smoothing folded in. An odd-sized batch
    (every batch when data.batch_size is odd; else the last one, when the loader keeps it) mixes all but its
    last image, which keeps its own smoothed label; a batch of 1 is never mixed."""

    def __init__(self, mixup: MixupSection, label_smoothing: float, num_classes: int, seed: int, rank: int) -> None:
        self.mixup = Mixup(
            mixup_alpha=mixup.mixup_alpha,
            cutmix_alpha=mixup.cutmix_alpha,
            prob=mixup.prob,
            switch_prob=mixup.switch_prob,
            mode="batch",
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self.smoothing, self.num_classes, self.seed, self.rank = label_smoothing, num_classes, seed, rank

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = np.random.SeedSequence([self.seed, epoch, batch, self.rank], spawn_key=(MIXUP_STREAM,))
        even = len(images) - len(images) % 2
        parts = []
        if even:
            with seeded_rng(int(key.generate_state(1)[0])):
                parts.append(self.mixup(images[:even], targets[:even])[1])  # mixes images[:even] in place
        if even < len(images):
            parts.append(mixup_target(targets[even:], self.num_classes, 1.0, self.smoothing))
        return images, torch.cat(parts) if len(parts) > 1 else parts[0]
