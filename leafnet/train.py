"""main(cfg): a whole training run, in one process or under torchrun.

Setup (devices, data, model, optimizer, resume) happens here; the step logic is in `engine`.
Every rank computes; rank 0 alone writes the run directory: `config.yaml`, `metrics.csv`,
`checkpoints/{last,best}.pt`, `tb/` and, when profiling, `profile/`.

SIGTERM (a Spot VM's preemption, `docker stop`, Kubernetes, Slurm) stops the run at the next
optimizer-step boundary: `last.pt` gets the epoch's position and the process exits with 143.
`train.resume=auto` continues from that batch and ends as an uninterrupted run would.

Fine-tuning controls (docs/finetune.md, leafnet/finetune.py): layer-wise lr decay and the classifier's lr
scale in the optimizer's groups, `train.freeze_epochs` (the classifier alone first; the DDP wrapper is
rebuilt when the rest thaws), mixup/cutmix with soft targets, class-balanced sampling, early stopping
and the N best checkpoints kept under `checkpoints/top/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from omegaconf import OmegaConf
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from leafnet import distributed
from leafnet.callable_stage import callable_module
from leafnet.checkpoint import load_checkpoint, rank_top, restore_rng_state, rng_state, save_checkpoint
from leafnet.checkpoint_writer import CheckpointWriter
from leafnet.confusion_image import confusion_image, write_png
from leafnet.data.batch_augment import INTERPOLATIONS
from leafnet.data.dataset import ManifestDataset
from leafnet.data.loaders import LoaderConfig, auto_workers, build_loader
from leafnet.data.prepared import PreparedData
from leafnet.data.transforms import (
    AugmentConfig,
    PreprocessSpec,
    augment_implementation,
    augments,
    eval_transform,
    train_transform,
)
from leafnet.engine import (
    AMP_CHOICES,
    AMP_DTYPES,
    EpochProgress,
    NonFiniteLossError,
    StepConfig,
    evaluate,
    resolve_amp,
    train_one_epoch,
)
from leafnet.errors import LeafnetError
from leafnet.finetune import Freeze, Mixer, build_optimizer, mixing_enabled
from leafnet.fsutil import write_json
from leafnet.models import create_model, model_preprocessing
from leafnet.profiling import StepProfiler
from leafnet.progress import progress_bar
from leafnet.run_clock import PHASES, RunClock
from leafnet.tracking import Tracker, denormalised_grid
from leafnet.train_config import TrainConfig

logger = logging.getLogger(__name__)

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: the status a supervisor expects of a process ended by SIGTERM
# Under DDP the ranks agree on stopping through an all_reduce, and reading its answer is a host sync,
# which keeps the CPU from queueing the next step ahead of the GPU: pay it every few steps, not each.
# One process reads its own flag at every step boundary, for free.
DDP_STOP_POLL_STEPS = 5


class TrainingStopped(SystemExit):
    """Raised once the checkpoint SIGTERM asked for is written. As a SystemExit, a script ends with
    status 143 and no traceback; an in-process caller can still catch it."""

    def __init__(self) -> None:
        super().__init__(EXIT_SIGTERM)


class SigtermStop:
    """Turns SIGTERM into a request that training honours at its next optimizer-step boundary.

    The handler only sets a flag: it runs between any two bytecodes, and a checkpoint saved there could
    catch the optimizer half-way through a step. Python lets only the main thread install handlers, so
    in another thread (a notebook's worker) SIGTERM keeps its usual effect. On exit the previous
    handler is put back.
    """

    def __init__(self, world_size: int = 1, device: torch.device | None = None) -> None:
        self.requested = False
        self.world_size, self.device = world_size, device or torch.device("cpu")
        self._polls, self._installed, self._previous = 0, False, None

    def __enter__(self) -> SigtermStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; the default is what it did.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def should_stop(self) -> bool:
        """Whether to stop at this boundary. Under DDP every rank answers the same (the flag summed over
        ranks), so one rank's SIGTERM stops all of them at the same step and none waits in a collective
        the others never join. Every rank polls the same number of times, so the cadence lines up."""
        if self.world_size == 1:
            return self.requested
        self._polls += 1
        if (self._polls - 1) % DDP_STOP_POLL_STEPS:
            return False
        flag = torch.tensor([int(self.requested)], dtype=torch.int32, device=self.device)
        return bool(distributed.all_reduce_sum(flag).item())


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier per optimizer step: linear warm-up from ~0, then cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def validate_config(cfg: TrainConfig) -> None:
    if cfg.amp.dtype not in AMP_CHOICES:
        raise LeafnetError(f"amp.dtype must be one of {', '.join(AMP_CHOICES)}, got {cfg.amp.dtype!r}")
    if cfg.optim.name not in ("adamw", "sgd"):
        raise LeafnetError(f"optim.name must be adamw or sgd, got {cfg.optim.name!r}")
    if cfg.schedule.epochs < 1 or cfg.optim.accumulate < 1 or cfg.data.batch_size < 1:
        raise LeafnetError("schedule.epochs, optim.accumulate and data.batch_size must be at least 1")
    if cfg.data.workers < -1 or cfg.data.cache_mb < 0:
        raise LeafnetError("data.workers must be -1 (auto) or at least 0, and data.cache_mb at least 0")
    # one line naming a bad or contradictory choice (the model's own filter, when data.interpolation leaves it to
    # a pretrained model, is checked when the transform is built)
    augment_implementation(cfg.data.augment, cfg.data.interpolation or "bilinear")
    _validate_finetune(cfg)
    if cfg.train.device not in ("auto", "cpu", "cuda"):
        raise LeafnetError(f"train.device must be auto, cpu or cuda, got {cfg.train.device!r}")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise LeafnetError("train.device=cuda but no CUDA device is available")
    PreparedData(cfg.data.root).require("data.root")


def _validate_finetune(cfg: TrainConfig) -> None:
    optim, mixup = cfg.optim, cfg.mixup
    if not 0 <= optim.layer_decay <= 1 or optim.head_lr_scale <= 0:
        raise LeafnetError("optim.layer_decay must be in [0, 1] (0 = off) and optim.head_lr_scale above 0")
    counts = {
        "train.freeze_epochs": cfg.train.freeze_epochs,
        "train.early_stop_patience": cfg.train.early_stop_patience,
        "checkpoint.keep_top": cfg.checkpoint.keep_top,
        "mixup.mixup_alpha": mixup.mixup_alpha,
        "mixup.cutmix_alpha": mixup.cutmix_alpha,
    }
    for key, value in counts.items():
        if value < 0:
            raise LeafnetError(f"{key} must be at least 0, got {value}")
    if not (0 <= mixup.prob <= 1 and 0 <= mixup.switch_prob <= 1):
        raise LeafnetError("mixup.prob and mixup.switch_prob must be in [0, 1]")
    if not 0 <= cfg.model.drop_path_rate < 1:
        raise LeafnetError(f"model.drop_path_rate must be in [0, 1), got {cfg.model.drop_path_rate}")
    if cfg.data.crop_pct is not None and not 0 < cfg.data.crop_pct <= 1:
        raise LeafnetError(f"data.crop_pct must be in (0, 1] (1 = no crop), got {cfg.data.crop_pct}")
    if cfg.data.interpolation is not None and cfg.data.interpolation not in INTERPOLATIONS:
        raise LeafnetError(
            f"data.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {cfg.data.interpolation!r}"
        )
    if not (cfg.model.pretrained or cfg.model.weights) and (
        cfg.train.freeze_epochs or cfg.data.normalize == "pretrained"
    ):
        # e.g. the photos recipe without its weights file: legal, but rarely what was meant
        logger.warning(
            "no model.pretrained file: %s a randomly initialised network",
            "train.freeze_epochs trains only the classifier of" if cfg.train.freeze_epochs else "normalising as",
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_resume(cfg: TrainConfig, run_dir: Path) -> Path | None:
    if cfg.train.resume in (None, ""):
        return None
    if cfg.train.resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    return Path(cfg.train.resume)


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


def main(cfg: TrainConfig, clock: RunClock | None = None) -> dict:
    """`clock`: where the run's wall time starts; the `leafnet train` command passes one started with its
    process (imports included), an in-process caller's run starts here."""
    clock = clock or RunClock()
    info = distributed.detect()
    validate_config(cfg)
    device = distributed.select_device(cfg.train.device, info)
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // local_procs))
    distributed.init(info, device, cfg.distributed.backend, cfg.distributed.timeout_s)
    try:
        # Installed before the setup, so a SIGTERM during it stops the run at its first step boundary.
        with SigtermStop(info.world_size, device) as stop:
            return Trainer(cfg, info, device, clock).fit(stop)
    finally:
        distributed.teardown()


class Trainer:
    """Holds the objects of one run; `fit()` loops over epochs."""

    def __init__(
        self, cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, clock: RunClock | None = None
    ) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.clock = clock or RunClock()
        self.run_dir = Path(cfg.train.output_dir) / cfg.train.name
        seed_everything(cfg.train.seed)
        data = cfg.data
        self.resumed_from = resolve_resume(cfg, self.run_dir)
        # A resumed run keeps the preprocessing its checkpoint records and takes every weight from it: the
        # pretrained file (and its config.json) may have gone or changed since the run began.
        model_config, resumed = cfg.model, None
        if self.resumed_from:
            resumed = load_checkpoint(self.resumed_from)  # read once: the spec here, the states in _resume
            recorded = resumed["preprocess"]
            preprocessing = {key: recorded[key] for key in ("mean", "std", "interpolation", "crop_pct")}
            model_config = dataclasses.replace(cfg.model, pretrained=None, weights=None)
        else:
            preprocessing = model_preprocessing(cfg.model, data.normalize, data.interpolation, data.crop_pct)
        self.spec = PreprocessSpec.from_prepared(data.root, input_size=data.input_size or None, **preprocessing)
        self.train_set = ManifestDataset(data.root, "train", train_transform(self.spec, data.augment))
        self.val_set = ManifestDataset(data.root, "val", eval_transform(self.spec))
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise LeafnetError(f"{data.root} has an empty train or val split; prepare it with val_fraction > 0")
        self.classes = self.train_set.classes
        self.workers = self._cache_and_size_workers()
        balanced = cfg.train.balanced_sampling
        loader = LoaderConfig(batch_size=data.batch_size, workers=self.workers, seed=cfg.train.seed, balanced=balanced)
        rank, world = info.rank, info.world_size
        self.train_loader = build_loader(self.train_set, loader, True, rank, world, device)
        eval_loader = LoaderConfig(batch_size=data.eval_batch_size, workers=self.workers, seed=cfg.train.seed)
        self.val_loader = build_loader(self.val_set, eval_loader, False, rank, world, device)

        model = create_model(model_config, len(self.classes)).to(device)
        self.memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.ema = ModelEmaV3(model, decay=cfg.ema.decay) if cfg.ema.enabled else None
        # Every parameter goes into the optimizer before any is frozen; the DDP and compile wrappers come
        # after the resume, once the first epoch's freeze is known (`_wrap`).
        self.model = model
        self.optimizer = build_optimizer(model, cfg.optim)
        self.freeze = Freeze(model) if cfg.train.freeze_epochs else None
        batches = len(self.train_loader)
        if cfg.train.max_steps_per_epoch:
            batches = min(batches, cfg.train.max_steps_per_epoch)
        self.epoch_batches = batches
        steps_per_epoch = math.ceil(batches / cfg.optim.accumulate)
        total = steps_per_epoch * cfg.schedule.epochs
        warmup = min(total, round(steps_per_epoch * cfg.schedule.warmup_epochs))
        # Each group's lr is its initial lr (optim.lr x its lr_scale) x this factor: one schedule for all.
        self.lr_factor = warmup_cosine(total, max(warmup, 1), cfg.schedule.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.amp = resolve_amp(cfg.amp.dtype, device)
        self.amp_dtype = AMP_DTYPES[self.amp]
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype is torch.float16 else None
        self.mix = None
        if mixing_enabled(cfg.mixup):  # label smoothing moves into the mixed soft targets
            self.mix = Mixer(cfg.mixup, cfg.optim.label_smoothing, len(self.classes), cfg.train.seed, info.rank)
        self.criterion = (
            SoftTargetCrossEntropy() if self.mix else nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        )
        self.step_config = StepConfig(
            self.amp_dtype, cfg.optim.clip_grad_norm, cfg.optim.accumulate, self.memory_format
        )
        self.start_epoch, self.best_top1 = 0, -1.0
        self.writer: CheckpointWriter | None = None  # rank 0's, for the length of fit()
        self.stale = 0  # validations since val top-1 last improved (train.early_stop_patience)
        self.top: list[dict] = []  # the kept top checkpoints, best first (checkpoint.keep_top)
        self.last_metrics: dict = {}  # the last finished epoch's row, kept in a mid-epoch checkpoint
        self.resume_progress: EpochProgress | None = None  # how far the first epoch got before a SIGTERM
        if resumed is not None:
            self._resume(self.resumed_from, resumed)
        if self.freeze is not None:
            self.freeze.set(self.start_epoch < cfg.train.freeze_epochs)
        self._wrap()

    def _cache_and_size_workers(self) -> int:
        """Caches the splits in memory when they fit data.cache_mb (train first, val from what is left),
        then picks the loader workers: data.workers, or for -1 what the loading now costs (auto_workers)."""
        data = self.cfg.data
        cached = []
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        budget = float(data.cache_mb)
        for dataset in (self.train_set, self.val_set):
            # every process on this machine caches its own copy: each takes its share of the free /dev/shm
            if budget > 0 and dataset.cache_in_memory(budget, sharers=local):
                budget -= dataset.cache.megabytes
                cached.append(f"{dataset.split} {dataset.cache.megabytes:.0f} MB")
        # On a CPU a batch augmentation runs beside the step on the same cores; a GPU's steps leave them free.
        in_process = self.train_set.batches_augment and self.device.type == "cpu"
        workers = (
            data.workers
            if data.workers >= 0
            else auto_workers(self.train_set.cache is not None, local, None, in_process)
        )
        self._log(
            f"data: {augment_implementation(data.augment, self.spec.interpolation) if augments(data.augment) else 'no'}"
            " augmentation, "
            f"{'cached in memory: ' + ', '.join(cached) if cached else 'decoded per item (data.cache_mb)'}, "
            f"{workers} loader worker(s) per process"
        )
        return workers

    def _wrap(self) -> None:
        """(Re)builds the DDP and compile wrappers around the model. DDP reduces the gradients of the
        parameters that require grad when it is built, so a thaw needs a new wrapper; the old one is
        dropped with its hooks (torch.compile compiles the new one again)."""
        model = unwrap(self.model)
        if self.info.enabled:
            device = self.device
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = torch.compile(model) if self.cfg.model.compile else model

    def _resume(self, path: Path, checkpoint: dict) -> None:
        if checkpoint["model_name"] != self.cfg.model.name or checkpoint["class_names"] != self.classes:
            raise LeafnetError(
                f"cannot resume from {path}: it holds {checkpoint['model_name']} for {checkpoint['num_classes']} "
                f"classes, this run is {self.cfg.model.name} for {len(self.classes)} classes of {self.cfg.data.root}"
            )
        if (self.ema is not None) != (checkpoint["train_model"] is not None):
            raise LeafnetError(f"cannot resume from {path}: ema.enabled differs from the run that wrote it")
        # "model" holds the weights to deploy: the EMA ones when EMA is on, kept apart from the raw ones.
        unwrap(self.model).load_state_dict(checkpoint["train_model"] or checkpoint["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["model"])

        def grouping(groups: list[dict]) -> list[tuple[int, float]]:  # sizes and lr scales: layer decay, head
            return [(len(group["params"]), round(float(group.get("lr_scale", 1.0)), 9)) for group in groups]

        if grouping(checkpoint["optimizer"]["param_groups"]) != grouping(self.optimizer.param_groups):
            raise LeafnetError(
                f"cannot resume from {path}: its optimizer groups the parameters otherwise; use the same "
                "optim.name, optim.weight_decay, optim.layer_decay and optim.head_lr_scale"
            )
        # load_state_dict restores every group setting saved with it, fused and foreach included: this run's
        # kernel choice wins (a GradScaler picks its path by the optimizer built here, and a foreach group
        # under a fused-built optimizer fails its first scaled step).
        kernels = {key: self.optimizer.param_groups[0].get(key) for key in ("fused", "foreach")}
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        for group in self.optimizer.param_groups:
            group.update(kernels)
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        self._warn_numerics_changed(path, checkpoint)
        self.start_epoch, self.best_top1 = checkpoint["epoch"] + 1, checkpoint["best_top1"]
        self.last_metrics = checkpoint["metrics"]
        self.stale, self.top = checkpoint.get("stale_validations", 0), checkpoint.get("top_checkpoints", [])
        if checkpoint.get("interrupted"):
            self.resume_progress = self._interrupted_progress(path, checkpoint["interrupted"])

    def _batch_geometry(self) -> dict[str, int]:
        """What fixes which samples a batch index covers, and where optimizer steps fall."""
        return {
            "batch_size": self.cfg.data.batch_size,
            "world_size": self.info.world_size,
            "accumulate": self.cfg.optim.accumulate,
        }

    def _interrupted_progress(self, path: Path, interrupted: dict) -> EpochProgress:
        if interrupted["geometry"] != self._batch_geometry():
            raise LeafnetError(
                f"cannot resume from {path}: it stopped mid-epoch with {interrupted['geometry']}, this run has "
                f"{self._batch_geometry()}; use the same data.batch_size, optim.accumulate and number of processes"
            )
        # The saved sums are global: one rank carries them, or the epoch's reduction would count them twice.
        sums = tuple(interrupted["sums"]) if self.info.is_main else (0.0, 0.0, 0.0)
        return EpochProgress(interrupted["batches"], sums)

    @property
    def eval_model(self) -> nn.Module:
        # Unwrapped: a DDP forward is a collective, which would hang if a rank's shard were empty.
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def _numerics(self, config: dict, unrecorded: bool = False) -> dict[str, str]:
        """The choices that change a run's numbers but not its state's shapes, as `config` (a checkpoint's
        stored config, or this run's) resolves them on this device: `auto` is resolved, not compared.
        `unrecorded`: for a checkpoint that did not record its own resolution (written before 2026-12-05), whose
        augmentation `auto` then resolved to staged where it now takes the supersampled warp."""
        fields = {field.name for field in dataclasses.fields(AugmentConfig)}  # an older run's config may lack some
        augment = AugmentConfig(**{k: v for k, v in config["data"]["augment"].items() if k in fields})
        implementation = augment_implementation(augment, self.spec.interpolation) if augments(augment) else "none"
        if unrecorded and augment.implementation == "auto" and implementation == "supersampled":
            implementation = "staged"
        return {
            "amp.dtype": resolve_amp(config["amp"]["dtype"], self.device),
            "data.augment.implementation": implementation,
        }

    @functools.cached_property
    def numerics(self) -> dict[str, str]:
        """This run's `_numerics`, recorded in each checkpoint so that a resume compares against what ran."""
        return self._numerics(self.config_dict)

    def _warn_numerics_changed(self, path: Path, checkpoint: dict) -> None:
        """A resumed run goes on in what this run resolves, which may not be what the run that wrote the
        checkpoint used (the defaults changed, or another machine resolves `auto` otherwise): legal, since
        nothing's shape differs, but the curve will not be the one an uninterrupted run would have drawn."""
        stored = checkpoint.get("config")
        if not stored:
            return
        before, now = checkpoint.get("numerics") or self._numerics(stored, unrecorded=True), self.numerics
        changed = {key: (before.get(key), now[key]) for key in now if before.get(key) != now[key]}
        if changed:
            differences = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
            restore = " ".join(f"{key}={old}" for key, (old, _) in changed.items())
            logger.warning(
                f"resuming {path} with {differences} (the run that wrote it used the former); "
                f"pass {restore} to go on as it started"
            )

    @functools.cached_property
    def config_dict(self) -> dict:
        """The run's config as plain containers, built once rather than by OmegaConf in every epoch's payload."""
        return OmegaConf.to_container(OmegaConf.structured(self.cfg))

    def _payload(self, epoch: int, metrics: dict) -> dict:
        return {
            "model_name": self.cfg.model.name,
            "num_classes": len(self.classes),
            "class_names": self.classes,
            "preprocess": self.spec.to_dict(),
            "model": (self.ema.module if self.ema is not None else unwrap(self.model)).state_dict(),
            "train_model": unwrap(self.model).state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": epoch,
            "best_top1": self.best_top1,
            "stale_validations": self.stale,
            "top_checkpoints": self.top,
            "metrics": metrics,
            "config": self.config_dict,
            "numerics": self.numerics,
            "rng": rng_state(),
            "interrupted": None,  # where SIGTERM stopped an epoch, in a mid-epoch checkpoint
        }

    def _log(self, message: str) -> None:
        if self.info.is_main:
            logger.info(message)

    def _write_run_header(self, tracker: Tracker) -> None:
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.structured(self.cfg), self.run_dir / "config.yaml")
        if self.cfg.logging.image_grid:
            samples = [self.train_set[(i, i)][0] for i in range(min(32, len(self.train_set)))]
            tracker.log_images(
                "train/augmented_samples", denormalised_grid(torch.stack(samples), self.spec.mean, self.spec.std)
            )

    def fit(self, stop: SigtermStop | None = None) -> dict:
        # Rank 0 writes; off the loop's critical path unless checkpoint.background=false.
        self.writer = CheckpointWriter(self.cfg.checkpoint.background) if self.info.is_main else None
        try:
            summary = self._fit(stop)
        except BaseException:
            if self.writer is not None:
                self.writer.close(raise_error=False)  # the reason the run ends is this exception, not a write
            raise
        if self.writer is not None:
            with self.clock.phase("checkpoint"):
                self.writer.close()  # every file on disk before the run returns
        return summary

    def _fit(self, stop: SigtermStop | None) -> dict:
        cfg, main, clock = self.cfg, self.info.is_main, self.clock
        tracker = Tracker(self.run_dir if main else None, cfg.logging.tensorboard, append=self.resumed_from is not None)
        if main:
            self._write_run_header(tracker)
            if self.resumed_from is None:
                self._clear_stale_top()
        start = "resuming from " + str(self.resumed_from) if self.resumed_from else "training"
        if self.resume_progress is not None:
            start += f" (epoch {self.start_epoch + 1}, after batch {self.resume_progress.batches})"
        self._log(
            f"{start}: {cfg.model.name}, {len(self.classes)} classes, {len(self.train_set)} train / "
            f"{len(self.val_set)} val images at {self.spec.input_size}px, {self.info.world_size} process(es) "
            f"on {self.device}, {torch.get_num_threads()} thread(s) each, amp {self.amp} -> {self.run_dir}"
        )
        val, val_epoch, stopped_early, started = None, cfg.schedule.epochs - 1, None, time.perf_counter()
        epochs = range(self.start_epoch, cfg.schedule.epochs)
        if self._early_stop_due() and epochs:
            stopped_early, epochs = self.start_epoch - 1, range(0)
            self._log(
                f"{self.resumed_from} stopped early after epoch {self.start_epoch} (no better val top-1 in "
                f"{self.stale} validations): nothing to train; a larger train.early_stop_patience continues it"
            )
        clock.end_startup()
        for epoch in epochs:
            resume, self.resume_progress = self.resume_progress, None
            self._freeze_for(epoch)
            # The epoch's full order, minus what this rank already trained on: skipped as indices, unread.
            skip = resume.batches * self.train_loader.batch_size if resume else 0
            self.train_loader.sampler.set_epoch(epoch, skip)
            train, profiler = self._train_epoch(epoch, resume, stop.should_stop if stop else None)
            clock.add("steps", train.seconds - train.data_seconds)
            clock.add("data_wait", train.data_seconds)
            if train.stopped is not None:
                self._stop_mid_epoch(epoch, train.stopped, tracker)
            last_epoch = epoch == cfg.schedule.epochs - 1
            metrics = {
                "epoch": epoch,
                "lr": cfg.optim.lr * self.lr_factor(self.scheduler.last_epoch),  # x each group's lr_scale
                "train_loss": train.loss,
                "train_top1": train.top1,
            }
            metrics |= {"images_per_s": train.images_per_s, "data_wait_fraction": train.data_wait_fraction}
            if (epoch + 1) % cfg.train.eval_every == 0 or last_epoch:
                with clock.phase("validation"):
                    distributed.broadcast_buffers(self.eval_model)  # every rank evaluates rank 0's model
                    val = evaluate(
                        self.eval_model,
                        self.val_loader,
                        self.device,
                        len(self.classes),
                        self.amp_dtype,
                        self.memory_format,
                    )
                metrics |= {"val_loss": val.loss, "val_top1": val.top1, "val_top5": val.top5}
                val_epoch = epoch
            metrics["epoch_seconds"] = train.seconds
            metrics["wall_s"] = clock.elapsed()
            improved = "val_top1" in metrics and metrics["val_top1"] > self.best_top1
            if improved:
                self.best_top1 = metrics["val_top1"]
            top = self._track_validation(epoch, metrics, improved)
            self.last_metrics = metrics
            if main:
                with clock.phase("checkpoint"):
                    self._save(epoch, metrics, improved, top)
                with clock.phase("logging"):
                    tracker.log_epoch(metrics)
                    if profiler is not None:
                        profiler.report(self._log)
                    if epoch % cfg.logging.print_every == 0 or last_epoch:
                        self._log(_epoch_line(metrics, cfg.schedule.epochs))
            if self._early_stop_due() and not last_epoch:
                stopped_early = epoch
                self._log(
                    f"early stop after epoch {epoch + 1}/{cfg.schedule.epochs}: val top-1 has not beaten "
                    f"{self.best_top1:.2%} in {self.stale} validations (train.early_stop_patience)"
                )
                break
            if epoch == cfg.train.stop_after_epoch and not last_epoch:
                self._log(
                    f"stopping after epoch {epoch + 1} as asked (train.stop_after_epoch); resume with train.resume=auto"
                )
                break
        if self.writer is not None:
            with clock.phase("checkpoint"):
                self.writer.flush()
        summary = {"run_dir": str(self.run_dir), "best_val_top1": self.best_top1}
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if stopped_early is not None:
            summary["early_stopped_after_epoch"] = stopped_early  # an index, as metrics.csv's epoch column
        self._log(
            f"done in {summary['seconds']:.0f}s: best val top-1 {self.best_top1:.2%}, checkpoints in {self.run_dir}"
        )
        with clock.phase("logging"):
            if val is not None:
                summary |= {"val_top1": val.top1, "val_top5": val.top5, "val_loss": val.loss}
                if main and cfg.logging.confusion_matrix:
                    title = "validation confusion matrix (last epoch)"
                    pixels = confusion_image(val.confusion, self.classes, title)
                    write_png(self.run_dir / "val_confusion_matrix.png", pixels)
                    tracker.log_pixels("val/confusion_matrix", pixels, val_epoch)
            if main:
                hparams = {
                    "model": cfg.model.name,
                    "lr": cfg.optim.lr,
                    "batch_size": cfg.data.batch_size,
                    "epochs": cfg.schedule.epochs,
                }
                hparams |= {
                    "input_size": self.spec.input_size,
                    "amp": self.amp,
                    "world_size": self.info.world_size,
                }
                tracker.log_hparams(hparams, {"hparam/best_val_top1": self.best_top1})
                tracker.close()
        summary["timing"] = clock.report()
        if main:
            write_json(self.run_dir / "timing.json", summary["timing"])
            self._log(_timing_line(summary["timing"]))
        return summary

    def _freeze_for(self, epoch: int) -> None:
        """Freezes everything but the classifier for the first train.freeze_epochs epochs, then thaws it
        (a new DDP wrapper then takes every parameter). The schedule runs on through both."""
        if self.freeze is None:
            return
        frozen = epoch < self.cfg.train.freeze_epochs
        if self.freeze.set(frozen):
            self._wrap()
        if frozen and epoch == self.start_epoch:
            end = min(self.cfg.train.freeze_epochs, self.cfg.schedule.epochs)
            self._log(
                f"{f'epochs {epoch + 1}-{end}' if end > epoch + 1 else f'epoch {end}'}: the classifier alone trains "
                f"({self.freeze.trainable:,} of {self.freeze.total:,} parameters, train.freeze_epochs)"
            )
        elif epoch == self.cfg.train.freeze_epochs:
            self._log(f"epoch {epoch + 1}: every parameter trains from here")

    def _track_validation(self, epoch: int, metrics: dict, improved: bool) -> tuple[dict | None, list[dict]]:
        """Counts validations without a better val top-1 (early stopping) and ranks the epoch among the
        kept top checkpoints: (its entry if it is kept, the entries it pushed out). Every rank runs it
        on the same reduced metrics, so every rank stops at the same epoch."""
        if "val_top1" not in metrics:
            return None, []
        self.stale = 0 if improved else self.stale + 1
        if not self.cfg.checkpoint.keep_top:
            return None, []
        self.top, added, dropped = rank_top(self.top, epoch, metrics["val_top1"], self.cfg.checkpoint.keep_top)
        return added, dropped

    def _early_stop_due(self) -> bool:
        patience = self.cfg.train.early_stop_patience
        return bool(patience) and self.stale >= patience

    def _train_epoch(
        self, epoch: int, resume: EpochProgress | None = None, should_stop: Callable[[], bool] | None = None
    ):
        cfg = self.cfg
        profile = cfg.profile.enabled and epoch == cfg.profile.epoch and self.info.is_main
        profiler = StepProfiler(self.run_dir / "profile", cfg.profile) if profile else None
        bar = progress_bar(
            total=self.epoch_batches,
            initial=resume.batches if resume else 0,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=None if self.info.is_main else True,
        )

        def on_step(step: int) -> None:
            bar.update()
            if profiler is not None:
                profiler.step()

        try:
            with profiler if profiler is not None else contextlib.nullcontext():
                result = train_one_epoch(
                    self.model,
                    self.criterion,
                    self.optimizer,
                    self.scheduler,
                    self.train_loader,
                    self.device,
                    self.step_config,
                    epoch,
                    self.scaler,
                    self.ema,
                    cfg.train.max_steps_per_epoch,
                    on_step,
                    resume=resume,
                    should_stop=should_stop,
                    mix=self.mix,
                    frozen=self.freeze,
                )
        except NonFiniteLossError as error:
            if self.writer is not None:
                self.writer.flush(raise_error=False)  # the last good epoch's files, possibly still being written
            last = self.run_dir / "checkpoints" / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise LeafnetError(
                f"{error}; training stopped, {kept}. Lower optim.lr, set optim.clip_grad_norm, or use amp.dtype=none"
            ) from None
        finally:
            bar.close()
        return result, profiler

    def _stop_mid_epoch(self, epoch: int, progress: EpochProgress, tracker: Tracker) -> NoReturn:
        """Writes where SIGTERM stopped the epoch into last.pt (whatever checkpoint.save_last says: it
        is what resume=auto reads), then ends the run with status 143."""
        last = self.run_dir / "checkpoints" / "last.pt"
        if self.info.is_main:
            self.writer.flush()  # an epoch's files still being written land first, then this one replaces last.pt
            payload = self._payload(epoch - 1, self.last_metrics)  # "epoch" stays the last finished one
            payload["interrupted"] = {
                "epoch": epoch,
                "batches": progress.batches,
                "sums": list(progress.sums),
                "geometry": self._batch_geometry(),
            }
            save_checkpoint(last, payload)
            tracker.close()
        # Every rank waits for rank 0's file: a launcher that sees one rank exit (torchrun) kills the rest.
        # .item(): an NCCL all_reduce returns before it completes; reading the result waits for it.
        distributed.all_reduce_sum(torch.zeros(1, device=self.device)).item()
        self._log(
            f"SIGTERM: stopped in epoch {epoch + 1}/{self.cfg.schedule.epochs} after batch {progress.batches}/"
            f"{self.epoch_batches}, saved {last}; continue with train.resume=auto (same batch size and processes)"
        )
        raise TrainingStopped()

    def _clear_stale_top(self) -> None:
        """A fresh run (no resume) under a used name: an earlier run's top checkpoints would pass for this
        one's (last.pt and best.pt are replaced anyway). Only files named as keep_top names them go."""
        for stale in (self.run_dir / "checkpoints" / "top").glob("epoch*_top1_*.pt"):
            stale.unlink()

    def _save(self, epoch: int, metrics: dict, improved: bool, top: tuple[dict | None, list] = (None, [])) -> None:
        checkpoints = self.run_dir / "checkpoints"
        added, dropped = top
        files = [checkpoints / "top" / added["file"]] if added is not None else []
        if self.cfg.checkpoint.save_last:
            files.append(checkpoints / "last.pt")
        if improved and self.cfg.checkpoint.save_best:
            files.append(checkpoints / "best.pt")
        if not files:
            return
        # One serialisation; the other names are links to it. The top file first, then the pruning, then
        # last.pt (which lists the kept ones): a crash between them leaves a last.pt whose epoch re-runs on
        # resume and makes the same choices again.
        stale = [checkpoints / "top" / entry["file"] for entry in dropped]
        self.writer.save(files[0], self._payload(epoch, metrics), also=files[1:], remove=stale)


def _timing_line(timing: dict) -> str:
    seconds = "  ".join(f"{name.replace('_', ' ')} {timing[name]:.1f}s" for name in (*PHASES, "other"))
    return (
        f"wall {timing['wall']:.1f}s: {seconds}; in training epochs: {timing['efficiency']:.1%} of the run after the "
        f"imports, {timing['process_efficiency']:.1%} of the process"
    )


def _epoch_line(metrics: dict, epochs: int) -> str:
    line = f"epoch {metrics['epoch'] + 1}/{epochs}  loss {metrics['train_loss']:.3f}"
    line += f"  train top-1 {metrics['train_top1']:.1%}"
    if "val_top1" in metrics:
        line += f"  val top-1 {metrics['val_top1']:.1%}  top-5 {metrics['val_top5']:.1%}"
    return line + (
        f"  lr {metrics['lr']:.2e}  {metrics['images_per_s']:.0f} img/s  data wait {metrics['data_wait_fraction']:.1%}"
        f"  {metrics['epoch_seconds']:.1f}s"
    )


callable_module(__name__)  # leafnet.train(...) is the stage (leafnet/callable_stage.py says why)
