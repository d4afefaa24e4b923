"""The typed schema of a training run and its defaults: the one source of them. `scripts/train.py --help`
and the annotated config/train.yaml are rendered from these classes, comments included (a test keeps the
file in step). The defaults are the `make demo` recipe for the synthetic leaves on a CPU laptop;
photographs want more, e.g. model.name=resnet50 data.input_size=224 data.augment.auto_augment=rand-m9-mstd0.5.

Kept apart from `leafnet.config` (the generic loader) the way PrepareConfig sits beside prepare:
each stage owns its schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leafnet.data.transforms import AugmentConfig
from leafnet.models import ModelConfig


@dataclass
class DataSection:
    root: str = "data/processed/synthetic"  # a directory written by scripts/prepare_data.py
    input_size: int = 56  # model input side in pixels; 0 = the prepared image size
    # mean/std (and crop_pct, interpolation unless set): pretrained = the backbone's (docs/finetune.md), data =
    # the train split's; auto = pretrained when model.pretrained is set, else data
    normalize: str = "auto"
    # eval: resize the shorter side to input_size / crop_pct, then centre-crop; null = the backbone's
    # (normalize=pretrained), else 1.0
    crop_pct: float | None = None
    interpolation: str | None = None  # bilinear | bicubic | nearest | lanczos; null = the backbone's, else bilinear
    batch_size: int = 64  # per process; the global batch is batch_size x processes x accumulate
    eval_batch_size: int = 256  # validation batch per process
    # DataLoader worker processes per training process; -1 = auto: none when the cached train split is augmented a
    # batch at a time (staged, supersampled, warp) on a CPU (cheaper in the training process than in a process
    # competing for its cores), 1 for another cached split or on a GPU, else up to half the cores (2 to 8)
    workers: int = -1
    # decode each split once into memory (uint8, after the deterministic resize) when it fits in this many MB
    # per process (train first, then val); 0 = decode every image every epoch
    cache_mb: int = 4096
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimSection:
    name: str = "adamw"  # adamw | sgd (timm's factory: no weight decay on norms and biases)
    lr: float = 3e-3  # peak learning rate, after the warm-up
    weight_decay: float = 0.05  # decoupled (AdamW) or L2 (SGD) decay of weights, not of norms and biases
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.1  # share of the target spread over the other classes
    clip_grad_norm: float = 5.0  # 0 = off
    accumulate: int = 1  # micro-batches per optimizer step
    layer_decay: float = 0.0  # layer-wise lr decay: the k-th layer below the top gets lr x layer_decay^k; 0 = off
    head_lr_scale: float = 1.0  # the classifier's lr x this, on top of layer_decay; 1 = off
    # torch's fused AdamW/SGD kernel where it has one (CPU, CUDA): the same update up to float rounding, in less
    # time per step; false = torch's default (foreach)
    fused: bool = True


@dataclass
class MixupSection:
    mixup_alpha: float = 0.0  # mixup's Beta(alpha, alpha) blend of image pairs; 0 = off
    cutmix_alpha: float = 0.0  # cutmix's Beta(alpha, alpha) pasted box; 0 = off
    prob: float = 1.0  # share of batches mixed (when mixup_alpha or cutmix_alpha > 0)
    switch_prob: float = 0.5  # share of mixed batches that use cutmix when both are on


@dataclass
class ScheduleSection:
    epochs: int = 40  # passes over the train split (the demo recipe still gained held-out top-1 from 26 to 40)
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay, stepped per optimizer step
    min_lr_ratio: float = 0.01  # the cosine ends at lr x min_lr_ratio


@dataclass
class TrainSection:
    name: str = "leafnet"  # the run directory is <output_dir>/<name>
    output_dir: str = "runs"  # where run directories go
    seed: int = 0  # model init, sampling and augmentation; runs with one seed are reproducible
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # intra-op threads per process; 0 = cores / local processes
    resume: str | None = None  # a checkpoint path, or auto = runs/<name>/checkpoints/last.pt if present
    max_steps_per_epoch: int = 0  # 0 = whole epoch; small values make smoke runs
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    keep_freed_memory: bool = True  # glibc: freed blocks stay in the process for the next batch (leafnet/allocator.py)
    stop_after_epoch: int = -1  # end this invocation after that epoch index (preemptible jobs); resume later
    freeze_epochs: int = 0  # train only the classifier for this many epochs, then everything; 0 = off
    balanced_sampling: bool = False  # draw each epoch's training samples evenly across classes (with repeats)
    early_stop_patience: int = 0  # stop after this many validations without a better val top-1; 0 = off


@dataclass
class AmpSection:
    # none | auto | bfloat16 | float16 (float16 uses a GradScaler on CUDA); auto = bfloat16 where the device computes
    # it natively (a recent GPU; a CPU with AVX512-BF16 or AMX), else none (float32). On this project's AMX CPU the demo
    # recipe's steps took 0.8x float32's, with the same held-out top-1 (docs/training.md)
    dtype: str = "auto"


@dataclass
class EmaSection:
    # keep an exponential moving average of the weights: validation, best.pt and export use it (checkpoints deploy it).
    # Off in the demo recipe: over three seeds it did not reach 95% val reliably sooner (docs/training.md), and its int8
    # variants once lost 2 test images, failing export's gate
    enabled: bool = False
    # EMA decay per optimizer step: 0.95 averages about the last 20 steps (one demo epoch); more steps per epoch
    # or a longer run want it nearer 1 (0.999 for 1,000 steps an epoch)
    decay: float = 0.95


@dataclass
class DistributedSection:
    backend: str = "auto"  # auto = nccl on CUDA, gloo on CPU
    timeout_s: int = 1800  # seconds a collective may wait for the other processes


@dataclass
class LoggingSection:
    tensorboard: bool = True  # TensorBoard events in <run>/tb
    image_grid: bool = True  # a grid of augmented training samples, once
    confusion_matrix: bool = True  # figure at the end of the run
    print_every: int = 1  # epochs between console lines


@dataclass
class ProfileSection:
    enabled: bool = False  # torch.profiler over a window of steps of one epoch, trace in <run>/profile
    epoch: int = 0  # which epoch to profile
    wait: int = 2  # steps skipped before the window
    warmup: int = 2  # steps profiled but discarded
    active: int = 4  # steps recorded
    top_k: int = 15  # rows of the operator table printed at the end
    record_shapes: bool = False  # record input shapes (larger traces)


@dataclass
class CheckpointSection:
    save_last: bool = True  # <run>/checkpoints/last.pt every epoch (resume reads it); SIGTERM writes it anyway
    save_best: bool = True  # <run>/checkpoints/best.pt, the epoch with the highest val top-1
    keep_top: int = 0  # also keep the N best epochs as <run>/checkpoints/top/epoch<k>_top1_<x>.pt; 0 = off
    # write checkpoints on a background thread (one serialisation per epoch, best.pt a link to it); false = inline
    background: bool = True


@dataclass
class TrainConfig:
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    mixup: MixupSection = field(default_factory=MixupSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    amp: AmpSection = field(default_factory=AmpSection)
    ema: EmaSection = field(default_factory=EmaSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
