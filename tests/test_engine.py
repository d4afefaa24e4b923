import math

import pytest
import torch
from torch import nn

from leafnet.engine import NonFiniteLossError, StepConfig, topk_correct, train_one_epoch
from leafnet.train import warmup_cosine


def _setup(batches: int, accumulate: int):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(batches)]
    return model, optimizer, scheduler, loader, StepConfig(accumulate=accumulate)


@pytest.mark.parametrize(("batches", "accumulate", "optimizer_steps"), [(6, 1, 6), (6, 2, 3), (7, 2, 4), (5, 3, 2)])
def test_accumulation_steps_on_boundaries_and_on_the_last_batch(batches, accumulate, optimizer_steps):
    model, optimizer, scheduler, loader, step = _setup(batches, accumulate)
    result = train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, scheduler, loader, torch.device("cpu"), step)
    assert scheduler.last_epoch == optimizer_steps
    assert result.steps == batches and result.images == 5 * batches
    assert all(p.grad is None for p in model.parameters())  # nothing left half-accumulated


def test_max_steps_limits_the_epoch_and_metrics_are_exact():
    model, optimizer, scheduler, loader, step = _setup(6, 1)
    result = train_one_epoch(
        model, nn.CrossEntropyLoss(), optimizer, scheduler, loader, torch.device("cpu"), step, max_steps=4
    )
    assert result.steps == 4 and result.images == 20 and 0 <= result.top1 <= 1


def test_non_finite_loss_raises():
    model, optimizer, scheduler, loader, step = _setup(3, 1)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError):
        train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, scheduler, loader, torch.device("cpu"), step)


def test_topk_counts_hits_and_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 2, 0])
    top1, top5 = topk_correct(logits, targets)
    assert (top1.item(), top5.item()) == (1, 3)


def test_warmup_then_cosine():
    factor = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.01)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(100) == pytest.approx(0.01)
