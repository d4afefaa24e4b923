"""The typed schema of a training run; config/train.yaml holds the same keys with comments.

Kept apart from `leafnet.config` (the generic loader) the way PrepareConfig sits beside prepare:
each stage owns its schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leafnet.data.transforms import AugmentConfig
from leafnet.models import ModelConfig


@dataclass
class DataSection:
    root: str = "data/processed/synthetic"
    input_size: int = 0  # 0 = the prepared image size
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    batch_size: int = 64  # per process
    eval_batch_size: int = 128
    workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimSection:
    name: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.1
    clip_grad_norm: float = 5.0  # 0 = off
    accumulate: int = 1  # micro-batches per optimizer step


@dataclass
class ScheduleSection:
    epochs: int = 30
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay, stepped per optimizer step
    min_lr_ratio: float = 0.01


@dataclass
class TrainSection:
    name: str = "leafnet"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # intra-op threads per process; 0 = cores / local processes
    resume: str | None = None  # a checkpoint path, or auto = runs/<name>/checkpoints/last.pt if present
    max_steps_per_epoch: int = 0  # 0 = whole epoch; small values make smoke runs
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    stop_after_epoch: int = -1  # end this invocation after that epoch index (preemptible jobs); resume later


@dataclass
class AmpSection:
    dtype: str = "none"  # none | bfloat16 | float16 (float16 uses a GradScaler on CUDA)


@dataclass
class EmaSection:
    enabled: bool = False
    decay: float = 0.998


@dataclass
class DistributedSection:
    backend: str = "auto"  # auto = nccl on CUDA, gloo on CPU
    timeout_s: int = 1800


@dataclass
class LoggingSection:
    tensorboard: bool = True
    image_grid: bool = True  # a grid of augmented training samples, once
    confusion_matrix: bool = True  # figure at the end of the run
    print_every: int = 1  # epochs between console lines


@dataclass
class ProfileSection:
    enabled: bool = False
    epoch: int = 0  # which epoch to profile
    wait: int = 2
    warmup: int = 2
    active: int = 4
    top_k: int = 15  # rows of the operator table printed at the end
    record_shapes: bool = False


@dataclass
class CheckpointSection:
    save_last: bool = True
    save_best: bool = True  # best by val top-1


@dataclass
class TrainConfig:
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    amp: AmpSection = field(default_factory=AmpSection)
    ema: EmaSection = field(default_factory=EmaSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
