"""Does data loading keep up with training? Three rates measured in one run, as images/s:

- loader alone, per worker count (decode + augment + collate, nothing else);
- compute alone: forward + backward + optimizer step on tensors already in memory;
- fed training: the same steps pulling batches from the real loader, with the fraction of time
  spent waiting for data. Fed ÷ compute is the share of the pure compute rate that training keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import timm
import torch
from torch import nn

from leafnet.data.dataset import ManifestDataset
from leafnet.data.loaders import LoaderConfig, build_loader
from leafnet.data.transforms import PreprocessSpec, train_transform
from leafnet.progress import progress_bar


@dataclass
class LoaderBenchConfig:
    data: str = "data/processed/synthetic"
    model: str = "resnet18"
    input_size: int = 128
    batch_size: int = 64
    workers: list[int] = field(default_factory=lambda: [0, 1, 2])
    fed_workers: int = 2
    batches: int = 15  # measured batches per setting, after warm-up
    warmup: int = 3
    threads: int = 0  # torch intra-op threads; 0 = all cores
    channels_last: bool = True
    output: str = "runs/benchmarks/loader.json"


def _cycle(loader):
    while True:
        yield from loader


def loader_rate(loader, batches: int, warmup: int) -> float:
    batches_iter = _cycle(loader)
    for _ in range(warmup):
        next(batches_iter)
    images, start = 0, time.perf_counter()
    for _ in progress_bar(range(batches), desc="loader", unit="batch"):
        images += next(batches_iter)[0].shape[0]
    return images / (time.perf_counter() - start)


class _Trainer:
    """One SGD step of `model` on a batch; kept minimal so the benchmark measures the model, not us."""

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format).train()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.loss = nn.CrossEntropyLoss()

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.contiguous(memory_format=self.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(images), labels).backward()
        self.optimizer.step()


def compute_rate(trainer: _Trainer, batch: tuple[torch.Tensor, torch.Tensor], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        trainer.step(*batch)
    start = time.perf_counter()
    for _ in progress_bar(range(steps), desc="compute", unit="step"):
        trainer.step(*batch)
    return steps * batch[0].shape[0] / (time.perf_counter() - start)


def fed_rate(trainer: _Trainer, loader, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, fraction of wall time spent waiting for the loader)."""
    batches = _cycle(loader)
    for _ in range(warmup):
        trainer.step(*next(batches))
    waiting, images, start = 0.0, 0, time.perf_counter()
    for _ in progress_bar(range(steps), desc="fed", unit="step"):
        t0 = time.perf_counter()
        images_batch, labels = next(batches)
        waiting += time.perf_counter() - t0
        trainer.step(images_batch, labels)
        images += images_batch.shape[0]
    elapsed = time.perf_counter() - start
    return images / elapsed, waiting / elapsed


def run_loader_benchmark(config: LoaderBenchConfig, log=print) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    spec = PreprocessSpec.from_prepared(config.data, input_size=config.input_size)
    dataset = ManifestDataset(config.data, "train", train_transform(spec))
    result: dict = {
        "config": {k: v for k, v in config.__dict__.items()},
        "torch_threads": torch.get_num_threads(),
        "loader_images_per_s": {},
    }

    def loader(workers: int):
        return build_loader(dataset, LoaderConfig(batch_size=config.batch_size, workers=workers), train=True)

    for workers in config.workers:
        rate = loader_rate(loader(workers), config.batches, config.warmup)
        result["loader_images_per_s"][str(workers)] = round(rate, 1)
        log(f"loader alone, {workers} worker(s): {rate:8.1f} img/s")

    model = timm.create_model(config.model, num_classes=len(dataset.classes))
    trainer = _Trainer(model, config.channels_last)
    batch = next(iter(loader(0)))
    compute = compute_rate(trainer, batch, config.batches, config.warmup)
    result["compute_images_per_s"] = round(compute, 1)
    log(f"compute alone ({config.model}, {config.input_size}px, batch {config.batch_size}): {compute:8.1f} img/s")

    fed, wait = fed_rate(trainer, loader(config.fed_workers), config.batches, config.warmup)
    result["fed"] = {
        "workers": config.fed_workers,
        "images_per_s": round(fed, 1),
        "data_wait_fraction": round(wait, 3),
        "fraction_of_compute_rate": round(fed / compute, 3),
    }
    log(
        f"fed training, {config.fed_workers} worker(s): {fed:8.1f} img/s = {fed / compute:.0%} of compute alone, "
        f"{wait:.1%} of the time waiting for data"
    )
    return result
