"""Does data loading keep up with training? Three rates measured in one run, as images/s:

- loader alone, per worker count (decode + augment + collate, nothing else);
- compute alone and fed training: the real training step on a batch in memory and on batches from
  the real loader (`leafnet.bench.train.measure`), with the fraction of time spent waiting for data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from leafnet.bench.train import measure
from leafnet.config import load_config
from leafnet.data.dataset import ManifestDataset
from leafnet.data.loaders import LoaderConfig, build_loader
from leafnet.data.transforms import PreprocessSpec, train_transform
from leafnet.progress import progress_bar
from leafnet.train_config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class LoaderBenchConfig:
    data: str = "data/processed/synthetic"  # a prepared data directory
    model: str = "resnet18"  # the timm model of the training step
    input_size: int = 128  # model input side in pixels
    batch_size: int = 64  # images per batch
    workers: list[int] = field(default_factory=lambda: [0, 1, 2])  # loader worker counts measured alone
    fed_workers: int = 2  # loader workers feeding the training step
    batches: int = 15  # measured batches per setting, after warm-up
    warmup: int = 3  # batches run before timing
    threads: int = 0  # torch intra-op threads; 0 = all cores
    channels_last: bool = True  # NHWC memory format for the training step
    train_config: str | None = None  # a YAML of training options (optimizer, schedule); default: TrainConfig's
    output: str = "runs/benchmarks/loader.json"  # where the results go


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


def run_loader_benchmark(config: LoaderBenchConfig, log=logger.info) -> dict:
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

    cfg = load_config(TrainConfig, files=[config.train_config] if config.train_config else [])
    cfg.data.root, cfg.data.input_size, cfg.data.batch_size = config.data, config.input_size, config.batch_size
    cfg.data.workers, cfg.model.name, cfg.model.channels_last = config.fed_workers, config.model, config.channels_last
    cfg.train.threads, cfg.logging.tensorboard = config.threads, False
    rates = measure(cfg, config.batches, config.warmup)
    compute, fed = rates["compute_images_per_s"], rates["images_per_s"]
    result["compute_images_per_s"] = compute
    log(f"compute alone ({config.model}, {config.input_size}px, batch {config.batch_size}): {compute:8.1f} img/s")
    result["fed"] = {
        "workers": config.fed_workers,
        "images_per_s": fed,
        "data_wait_fraction": rates["data_wait_fraction"],
        "fraction_of_compute_rate": rates["fraction_of_compute"],
    }
    log(
        f"fed training, {config.fed_workers} worker(s): {fed:8.1f} img/s = "
        f"{rates['fraction_of_compute']:.0%} of compute alone, "
        f"{rates['data_wait_fraction']:.1%} of the time waiting for data"
    )
    return result
