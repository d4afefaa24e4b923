"""Training throughput, side by side: each variant of a config runs the real training step
(`engine.train_one_epoch`) twice after warm-up:

- fed: batches from the real loader (decode, augment, collate, transfer);
- compute: one batch already in memory, repeated: forward + backward + optimizer step only.

fed ÷ compute is the share of pure compute speed that training keeps (1.0 = loading and bookkeeping
cost nothing); speed-ups between variants are ratios measured in the same run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from leafnet.config import load_config
from leafnet.distributed import DistInfo, select_device
from leafnet.engine import train_one_epoch
from leafnet.train import Trainer, validate_config
from leafnet.train_config import TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = {
    "default": [],
    "contiguous": ["model.channels_last=false"],
    "workers=0": ["data.workers=0"],
    "bf16": ["amp.dtype=bfloat16"],
}


@dataclass
class TrainBenchConfig:
    config: str | None = None  # a YAML of training options under the variants; default: TrainConfig's
    base: list[str] = field(default_factory=list)  # overrides applied to every variant
    # name -> overrides; empty = DEFAULT_VARIANTS (a dict given on the command line replaces them,
    # where a non-empty default would be merged into by OmegaConf)
    variants: dict[str, list[str]] = field(default_factory=dict)
    steps: int = 20  # measured steps per variant and mode
    warmup: int = 5  # steps run before timing
    output: str = "runs/benchmarks/train.json"  # where the results go


def _timed(trainer: Trainer, loader, steps: int, warmup: int):
    def run(count: int):
        return train_one_epoch(
            trainer.model,
            trainer.criterion,
            trainer.optimizer,
            trainer.scheduler,
            loader,
            trainer.device,
            trainer.step_config,
            scaler=trainer.scaler,
            ema=trainer.ema,
            max_steps=count,
            mix=trainer.mix,
            frozen=trainer.freeze,
        )

    run(warmup)
    return run(steps)


def measure(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    """Fed and compute-only throughput of one configuration, in one process."""
    validate_config(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = select_device(cfg.train.device, DistInfo())
    trainer = Trainer(cfg, DistInfo(), device)
    loader = trainer.train_loader
    if len(loader) < steps + warmup:  # short data sets: cycle whole epochs
        loader = [batch for _ in range(-(-(steps + warmup) // len(loader))) for batch in loader]
    fed = _timed(trainer, loader, steps, warmup)
    size = trainer.spec.input_size
    batch = (
        torch.randn(cfg.data.batch_size, 3, size, size),
        torch.randint(0, len(trainer.classes), (cfg.data.batch_size,)),
    )
    compute = _timed(trainer, [batch] * (steps + warmup), steps, warmup)
    return {
        "images_per_s": round(fed.images_per_s, 1),
        "compute_images_per_s": round(compute.images_per_s, 1),
        "fraction_of_compute": round(fed.images_per_s / compute.images_per_s, 3),
        "data_wait_fraction": round(fed.data_wait_fraction, 3),
        "step_ms": round(1000 * fed.seconds / fed.steps, 1),
        "threads": torch.get_num_threads(),
        "input_size": size,
        "batch_size": cfg.data.batch_size,
    }


def run_train_benchmark(config: TrainBenchConfig, log=logger.info) -> dict:
    files = [config.config] if config.config else []
    results: dict[str, dict] = {}
    for name, overrides in (config.variants or DEFAULT_VARIANTS).items():
        cfg = load_config(TrainConfig, [*config.base, *overrides], files=files)
        cfg.logging.tensorboard = False
        log(f"measuring {name} ({' '.join(overrides) or 'as configured'}) ...")
        results[name] = measure(cfg, config.steps, config.warmup)
    reference = next(iter(results.values()))["images_per_s"]
    for result in results.values():
        result["speedup_vs_first"] = round(result["images_per_s"] / reference, 3)
    log(format_table(results))
    return {"base": config.base, "steps": config.steps, "warmup": config.warmup, "variants": results}


def format_table(results: dict[str, dict]) -> str:
    lines = [
        "| variant | img/s | compute img/s | fed / compute | data wait | step ms | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['images_per_s']:.1f} | {r['compute_images_per_s']:.1f} | {r['fraction_of_compute']:.0%} "
            f"| {r['data_wait_fraction']:.1%} | {r['step_ms']:.0f} | {r['speedup_vs_first']:.2f}x |"
        )
    return "\n".join(lines)
