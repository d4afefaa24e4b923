"""Training speed, side by side. `mode=run` (leafnet/bench/train_run.py) runs whole trainings and
reports the wall time users wait for and the time until val top-1 reaches a target. `mode=steps`, the
default, measures the step rate: each variant of a config runs the real training step
(`engine.train_one_epoch`) twice after warm-up:

- fed: batches from the real loader (decode, augment, collate, transfer);
- compute: one batch already in memory, repeated: forward + backward + optimizer step only.

fed ÷ compute is the share of pure compute speed that training keeps (1.0 = loading and bookkeeping
cost nothing); speed-ups between variants are ratios measured in the same run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from leafnet.allocator import keep_freed_memory
from leafnet.bench.train_run import BASELINE_VARIANTS, run_time_to_accuracy
from leafnet.config import load_config
from leafnet.data.prepared import PreparedData
from leafnet.distributed import DistInfo, select_device
from leafnet.engine import train_one_epoch
from leafnet.errors import LeafnetError
from leafnet.train import Trainer, validate_config
from leafnet.train_config import TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = {
    "default": [],
    "contiguous": ["model.channels_last=false"],
    "workers=0": ["data.workers=0"],
    "fp32": ["amp.dtype=none"],  # the default is bfloat16 where it is native
}


@dataclass
class TrainBenchConfig:
    # steps = the step rate of each variant (fed and compute-only); run = whole training runs: wall time split,
    # efficiency, time to each val top-1 target and test top-1 (before/after issue 19's changes by default)
    mode: str = "steps"
    config: str | None = None  # steps: a YAML of training options under the variants; default: TrainConfig's
    base: list[str] = field(default_factory=list)  # overrides applied to every variant
    # name -> overrides; empty = the mode's defaults (steps: default, contiguous, workers=0, fp32; run: before,
    # after). A dict given on the command line replaces them, where a non-empty default would be merged into.
    variants: dict[str, list[str]] = field(default_factory=dict)
    steps: int = 20  # steps: measured steps per variant and mode
    warmup: int = 5  # steps: steps run before timing
    targets: list[float] = field(default_factory=lambda: [0.9, 0.95])  # run: val top-1 levels to time
    repeats: int = 1  # runs per variant, in turns; the median is reported
    # run: the train.seed of each turn, so that medians span seeds (test top-1 on a small split moves by a point or
    # two between seeds); its length is the number of turns. Empty = the configured seed in every turn.
    seeds: list[int] = field(default_factory=list)
    # run: a prepared data root (same classes) whose test split also scores every run's best checkpoint: on the
    # demo's 198 test images one image is half a point, so a larger set from another generator seed tells
    # recipes apart that the test split cannot (docs/training.md makes one). None = the test split only.
    holdout: str | None = None
    output: str = "runs/benchmarks/train.json"  # where the results go (run: the runs beside it, in train_runs/)


class Cycled:
    """The real loader, epoch after epoch, as one sequence of `length` batches: a short data set is still
    loaded (decoded, augmented) while it is timed, not read back from a list."""

    def __init__(self, loader, length: int) -> None:
        self.loader, self.length, self.epoch = loader, length, 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        while True:
            self.loader.sampler.set_epoch(self.epoch)
            self.epoch += 1
            yield from self.loader


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
    if cfg.train.keep_freed_memory:  # as `leafnet train` does; for the whole process (the variants must agree)
        keep_freed_memory()
    device = select_device(cfg.train.device, DistInfo())
    trainer = Trainer(cfg, DistInfo(), device)
    if trainer.train_set.cache is not None:  # the steady state of epoch 2 on: every image already in memory
        for index in range(len(trainer.train_set)):
            trainer.train_set[(index, 0)]
    fed = _timed(trainer, Cycled(trainer.train_loader, steps + warmup), steps, warmup)
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
    if config.repeats < 1:
        raise LeafnetError(f"repeats must be at least 1, got {config.repeats}")
    if config.mode == "run":
        if config.config:
            raise LeafnetError("config= applies to mode=steps; give mode=run its options in base=[...]")
        runs = Path(config.output).with_name("train_runs")
        variants = config.variants or BASELINE_VARIANTS
        seeds = list(config.seeds)
        if seeds and config.repeats not in (1, len(seeds)):
            raise LeafnetError(f"seeds= gives {len(seeds)} turns, repeats={config.repeats}: give one or the other")
        turns = [[f"train.seed={seed}"] for seed in seeds] or [[]] * config.repeats
        if config.holdout:
            check_holdout(config.holdout, load_config(TrainConfig, config.base).data.root)
        return run_time_to_accuracy(variants, config.base, list(config.targets), turns, runs, log, config.holdout)
    if config.holdout:
        raise LeafnetError("holdout= applies to mode=run; mode=steps times steps, not accuracy")
    if config.seeds:
        raise LeafnetError("seeds= applies to mode=run; mode=steps times steps, not accuracy")
    if config.mode != "steps":
        raise LeafnetError(f"mode must be steps or run, got {config.mode!r}")
    files = [config.config] if config.config else []
    variants = config.variants or DEFAULT_VARIANTS
    configs = {
        name: load_config(TrainConfig, [*config.base, *overrides], files=files) for name, overrides in variants.items()
    }
    for cfg in configs.values():
        cfg.logging.tensorboard = False
    kept = {name: cfg.train.keep_freed_memory for name, cfg in configs.items()}
    if len(set(kept.values())) > 1:
        raise LeafnetError(
            "mode=steps measures every variant in one process, where train.keep_freed_memory, once on, stays on: "
            f"compare it with mode=run (here {', '.join(f'{n}={v}' for n, v in kept.items())})"
        )
    measured: dict[str, list[dict]] = {name: [] for name in variants}
    for turn in range(config.repeats):  # in turns: a slower minute on a shared machine touches every variant
        for name, overrides in variants.items():
            log(f"measuring {name} ({' '.join(overrides) or 'as configured'}), turn {turn + 1}/{config.repeats} ...")
            measured[name].append(measure(configs[name], config.steps, config.warmup))
    results = {name: _median_row(rows) for name, rows in measured.items()}
    reference = next(iter(results.values()))["images_per_s"]
    for result in results.values():
        result["speedup_vs_first"] = round(result["images_per_s"] / reference, 3)
    log(format_table(results))
    summary = {"base": config.base, "steps": config.steps, "warmup": config.warmup, "repeats": config.repeats}
    return {**summary, "variants": results}


def check_holdout(holdout: str, data_root: str) -> None:
    """Before any training: `holdout` is prepared, has test images, and has the training data's classes."""
    held = PreparedData(holdout).require("holdout")
    if not held.rows("test"):
        raise LeafnetError(f"holdout={holdout} has no test images: prepare it with a test_fraction above 0")
    if PreparedData(data_root).is_prepared() and held.classes() != PreparedData(data_root).classes():
        raise LeafnetError(f"holdout={holdout} has other classes than data.root={data_root}")


def _median_row(rows: list[dict]) -> dict:
    """One variant's figures: the median run by fed throughput (its own figures, so they stay consistent)."""
    ranked = sorted(rows, key=lambda row: row["images_per_s"])
    row = dict(ranked[len(ranked) // 2])
    if len(rows) > 1:
        row["images_per_s_runs"] = [r["images_per_s"] for r in rows]
    return row


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
