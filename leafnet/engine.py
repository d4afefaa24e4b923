"""One epoch of training and one pass of evaluation: AMP, accumulation, clipping, EMA. No I/O.

Metrics are kept as sums on the device (loss·n, correct, n) and reduced across ranks once, so they
are exact under DDP and cost no host sync per step. `train_one_epoch` checks the loss for NaN/inf
every `check_every` steps and at the end, and raises `NonFiniteLossError` before the caller saves.
An epoch can stop early at an optimizer-step boundary (`should_stop`, e.g. on SIGTERM) and be resumed
later from the `EpochProgress` it returns; the resumed epoch's metrics are the whole epoch's.

Fine-tuning hooks (leafnet/finetune.py): `mix` turns a batch into mixed images and soft targets
(mixup/cutmix); the loss is then the criterion against the soft targets, and train top-1 counts a hit
when the prediction is the class with the largest share of the image's mixed target (its own label for
an unmixed image), the one honest hard label a blend has. `frozen` keeps the frozen part's normalisation
statistics in eval mode while the rest trains.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.profiler import record_function

from leafnet.distributed import all_reduce_sum

# (images, labels, epoch, batch index in the epoch) -> (mixed images, soft targets)
Mix = Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


class Frozen(Protocol):
    """What the epoch needs of a partly frozen model (`finetune.Freeze`)."""

    def eval_norms(self) -> None:
        """Called after `model.train()`: puts the frozen part's running-statistics layers in eval mode."""


AMP_DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
AMP_CHOICES = ("auto", *AMP_DTYPES)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU that supports it, a CPU with AVX512-BF16 or
    AMX. Elsewhere bfloat16 autocast is emulated and slower than float32, so `auto` keeps float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def resolve_amp(choice: str, device: torch.device) -> str:
    """amp.dtype as a run uses it: `auto` is bfloat16 where it is native (`native_bfloat16`), else none."""
    if choice != "auto":
        return choice
    return "bfloat16" if native_bfloat16(device) else "none"


class NonFiniteLossError(RuntimeError):
    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"loss became NaN or infinite in epoch {epoch} by step {step}")
        self.epoch, self.step = epoch, step


@dataclass
class StepConfig:
    amp_dtype: torch.dtype | None = None
    clip_grad_norm: float = 0.0  # 0 = off
    accumulate: int = 1  # micro-batches per optimizer step
    memory_format: torch.memory_format = torch.contiguous_format
    check_every: int = 20  # steps between NaN checks (each one is a host sync)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(targets[:, None])
    return [hits[:, : min(k, logits.shape[1])].any(dim=1).sum() for k in ks]


@dataclass
class EpochProgress:
    """How far an epoch got: micro-batches done (always an optimizer-step boundary) and the metric sums
    over them, (loss·n, correct, n) summed over all ranks."""

    batches: int = 0
    sums: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class EpochResult:
    loss: float  # loss and top1 cover the whole epoch, the part done before a resume included
    top1: float
    images: int  # images, seconds and data_seconds cover this call only, for throughput
    seconds: float
    data_seconds: float
    steps: int  # micro-batches of the epoch done so far
    stopped: EpochProgress | None = None  # set when `should_stop` ended the epoch early

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def data_wait_fraction(self) -> float:
        return self.data_seconds / max(self.seconds, 1e-9)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Sized,
    device: torch.device,
    step: StepConfig,
    epoch: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    ema: nn.Module | None = None,
    max_steps: int = 0,
    on_step: Callable[[int], None] | None = None,
    resume: EpochProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
    mix: Mix | None = None,
    frozen: Frozen | None = None,
) -> EpochResult:
    """Trains over `loader` once (or `max_steps` micro-batches) and returns exact global metrics.

    `resume`: the epoch already got this far; `loader` yields only the batches after it. Pass its sums
    on one rank only (they are global). `should_stop` is asked before each optimizer step's first
    micro-batch; True ends the epoch there, with the sums reduced over ranks into `stopped`. Under DDP
    it must answer the same on every rank, or the ranks' collectives no longer pair up. `mix`: see the
    module's docstring; `frozen`: a `finetune.Freeze` whose frozen part keeps its statistics.
    """
    model.train()
    if frozen is not None:
        frozen.eval_norms()
    resume = resume or EpochProgress()
    sums = torch.tensor(resume.sums, dtype=torch.float64, device=device)  # loss·n, correct, n
    data_seconds, steps, stopped = 0.0, resume.batches, False
    start = tick = time.perf_counter()
    total = resume.batches + len(loader)
    total = min(total, max_steps) if max_steps else total
    batches = iter(loader)
    while steps < total:
        # steps % accumulate == 0 exactly after an optimizer step (and at the start): no half-accumulated
        # gradients are lost, and the resume point is a boundary of the same accumulation groups.
        if should_stop is not None and steps % step.accumulate == 0 and should_stop():
            stopped = True
            break
        with record_function("data"):
            images, targets = next(batches)
        images = images.to(device, non_blocking=True).contiguous(memory_format=step.memory_format)
        targets = targets.to(device, non_blocking=True)
        data_seconds += time.perf_counter() - tick
        labels = targets  # what top-1 counts against
        if mix is not None:
            images, targets = mix(images, targets, epoch, steps)
            labels = targets.argmax(dim=1)
        steps += 1
        boundary = steps % step.accumulate == 0 or steps == total  # the last micro-batch always steps
        # DDP all-reduces gradients on every backward unless told not to: skip it between boundaries.
        sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with record_function("forward"), autocast(device, step.amp_dtype):
                logits = model(images)
                loss = criterion(logits, targets)
            with record_function("backward"):
                scaled = loss / step.accumulate
                (scaler.scale(scaled) if scaler else scaled).backward()
        if boundary:
            with record_function("optimizer"):
                _optimizer_step(model, optimizer, scaler, step.clip_grad_norm)
                scheduler.step()
                if ema is not None:
                    ema.update(model)
        with torch.no_grad():
            n = targets.shape[0]
            sums += torch.stack(
                [loss.detach().double() * n, topk_correct(logits, labels, (1,))[0].double(), sums.new_tensor(n)]
            )
        if steps % step.check_every == 0 and not torch.isfinite(sums[0]):
            raise NonFiniteLossError(epoch, steps)
        if on_step is not None:
            on_step(steps)
        tick = time.perf_counter()
    # The images carried in by `resume` ride along in the same reduction (one rank holds them), so
    # throughput counts this call's images only.
    totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([resume.sums[2]])]))
    if not torch.isfinite(totals[0]):
        raise NonFiniteLossError(epoch, steps)
    loss_sum, correct, count, carried = totals.tolist()
    images = int(count - carried)
    seconds = time.perf_counter() - start
    progress = EpochProgress(steps, (loss_sum, correct, count)) if stopped else None
    return EpochResult(
        loss_sum / max(count, 1), correct / max(count, 1), images, seconds, data_seconds, steps, progress
    )


def _optimizer_step(model, optimizer, scaler, clip_grad_norm: float) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor  # [true, predicted] counts, summed over ranks


@torch.inference_mode()  # no autograd bookkeeping at all, not just no gradients
def evaluate(
    model: nn.Module,
    loader: Sized,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix over this rank's shard, summed over all ranks."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, targets in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        top1, top5 = topk_correct(logits, targets)
        sums += torch.stack(
            [criterion(logits, targets).double(), top1.double(), top5.double(), sums.new_tensor(len(targets))]
        )
        confusion += torch.bincount(targets * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
    all_reduce_sum(sums)
    all_reduce_sum(confusion)
    loss, top1, top5, count = sums.tolist()
    n = max(count, 1)
    return EvalResult(loss / n, top1 / n, top5 / n, int(count), confusion.view(num_classes, num_classes).cpu())
