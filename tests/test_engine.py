import copy
import math

import pytest
import torch
from torch import nn

from leafnet.engine import (
    NonFiniteLossError,
    StepConfig,
    native_bfloat16,
    resolve_amp,
    topk_correct,
    train_one_epoch,
)
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
    # The same four steps written out by hand: loss and top-1 of each batch before its update.
    reference = copy.deepcopy(model)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    loss_sum, correct = 0.0, 0
    for images, targets in loader[:4]:
        logits = reference(images)
        loss = nn.functional.cross_entropy(logits, targets)
        loss_sum += loss.item() * len(targets)
        correct += (logits.argmax(dim=1) == targets).sum().item()
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()
    result = train_one_epoch(
        model, nn.CrossEntropyLoss(), optimizer, scheduler, loader, torch.device("cpu"), step, max_steps=4
    )
    assert result.steps == 4 and result.images == 20
    assert result.loss == pytest.approx(loss_sum / 20, rel=1e-6)
    assert result.top1 == correct / 20 and 0 < correct < 20
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)  # exactly four updates, no more


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_float16_loss_scaling_skips_overflowing_steps_and_unscales_the_rest():
    """On CPU the GradScaler path runs for real with autocast float16: a scale that overflows the fp16
    gradients skips the update and halves the scale; a sane one gives the updates of unscaled gradients."""
    fp16 = StepConfig(amp_dtype=torch.float16)
    model, optimizer, scheduler, loader, _ = _setup(4, 1)
    before = model.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=1000)
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, scheduler, loader, torch.device("cpu"), fp16, 0, scaler)
    assert torch.equal(model.weight, before) and scaler.get_scale() == 2.0**20  # four skips, four halvings

    model, optimizer, scheduler, loader, _ = _setup(4, 1)
    reference = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, scheduler, loader, torch.device("cpu"), fp16, 0, scaler)
    assert scaler.get_scale() == 2.0**8  # no overflow, no skip
    unscaled_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    unscaled_scheduler = torch.optim.lr_scheduler.LambdaLR(unscaled_optimizer, lambda step: 1.0)
    cpu = torch.device("cpu")
    train_one_epoch(reference, nn.CrossEntropyLoss(), unscaled_optimizer, unscaled_scheduler, loader, cpu, fp16)
    assert not torch.equal(model.weight, before)
    assert torch.allclose(model.weight, reference.weight, atol=1e-3)  # 256x larger steps if never unscaled


def test_ddp_all_reduces_gradients_only_on_accumulation_boundaries(tmp_path):
    """A real DDP model (gloo, one process): its communication hook runs once per all-reduce."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, optimizer, scheduler, loader, step = _setup(7, 3)
        ddp = nn.parallel.DistributedDataParallel(model)
        reductions = []

        def counting_hook(state, bucket):
            reductions.append(bucket.index())
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        ddp.register_comm_hook(None, counting_hook)
        train_one_epoch(ddp, nn.CrossEntropyLoss(), optimizer, scheduler, loader, torch.device("cpu"), step)
    finally:
        torch.distributed.destroy_process_group()
    assert scheduler.last_epoch == 3  # boundaries after micro-batches 3, 6 and the last (7)
    assert len(reductions) == 3  # not 7: no_sync between boundaries


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


@pytest.mark.parametrize("accumulate", [1, 2])
def test_an_epoch_stopped_at_a_step_boundary_resumes_to_the_uninterrupted_result(accumulate):
    cpu, criterion = torch.device("cpu"), nn.CrossEntropyLoss()
    model, optimizer, scheduler, loader, step = _setup(7, accumulate)
    whole = train_one_epoch(model, criterion, optimizer, scheduler, loader, cpu, step)

    model2, optimizer2, scheduler2, loader, step = _setup(7, accumulate)
    asked = []

    def stop_after_three_asks() -> bool:
        asked.append(len(asked))
        return len(asked) > 3

    first = train_one_epoch(
        model2, criterion, optimizer2, scheduler2, loader, cpu, step, should_stop=stop_after_three_asks
    )
    done = first.stopped.batches
    assert done == 3 * accumulate and first.steps == done  # asked only on boundaries, stopped on the 4th
    assert scheduler2.last_epoch == 3 and all(p.grad is None for p in model2.parameters())
    rest = train_one_epoch(model2, criterion, optimizer2, scheduler2, loader[done:], cpu, step, resume=first.stopped)
    assert rest.stopped is None and rest.steps == 7 and rest.images == 5 * (7 - done)
    assert (rest.loss, rest.top1) == (whole.loss, whole.top1)  # the whole epoch's metrics, bit for bit
    assert scheduler2.last_epoch == scheduler.last_epoch
    assert torch.equal(model2.weight, model.weight) and torch.equal(model2.bias, model.bias)


def test_amp_auto_is_bfloat16_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) == "none" and resolve_amp("float16", cpu) == "float16"
    for native, expected in [(True, "bfloat16"), (False, "none")]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert native_bfloat16(cpu) is native and resolve_amp("auto", cpu) == expected
