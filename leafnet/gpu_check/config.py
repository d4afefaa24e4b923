"""Options of `leafnet gpu-check` and their defaults: the one source of them (`leafnet gpu-check --help` is
rendered from these classes). The defaults fit a CUDA machine in about 5 minutes; docs/gpu.md explains each
check."""

from __future__ import annotations

from dataclasses import dataclass, field

# every check, in the order they run (docs/gpu.md)
CHECKS = (
    "train_bf16",
    "train_fp16",
    "ddp",
    "evaluate",
    "export",
    "parity_torchscript",
    "parity_onnxruntime",
    "serving",
)


@dataclass
class DataSection:
    root: str | None = None  # a prepared data set to use; null = generate the synthetic leaves below into work_dir
    per_species: int = 10  # generated images per species (99 species)
    size: int = 64  # prepared image side in pixels (the model's input size)
    seed: int = 0  # the generated set and its split are pure functions of this seed


@dataclass
class TrainSection:
    model: str = "resnet10t"  # timm architecture trained by every training check
    epochs: int = 2  # epochs of each training run
    batch_size: int = 64  # per process
    max_steps_per_epoch: int = 0  # 0 = whole epochs; a few steps make a smoke run
    workers: int = 4  # DataLoader workers per process
    # torch.compile the float16 run (model.compile); Triton builds its launcher with a C compiler: false where none is
    compile: bool = True


@dataclass
class DdpSection:
    processes: int = 0  # torchrun processes; 0 = one per visible GPU on cuda, 2 on cpu
    timeout_s: int = 240  # the torchrun run is stopped and failed after this many seconds


@dataclass
class ParitySection:
    images: int = 64  # test images compared output by output
    batch_size: int = 32  # images per call in the latency measurement
    warmup: int = 5  # untimed calls before the timed ones
    runs: int = 20  # timed calls; latency is their median
    # largest |logit - eager logit| allowed; TF32 convolutions (cuDNN's default) differ from fp32 by ~1e-3
    max_abs_logit: float = 0.05
    min_top1_agreement: float = 0.98  # share of images whose top-1 class must agree with eager's


@dataclass
class ServingSection:
    repeats: int = 10  # handler calls on one batch; latency is their median


@dataclass
class GpuCheckConfig:
    device: str = "cuda"  # cuda (fails in one line without one) | cpu (the same checks on the CPU, for a dry run)
    output: str = "runs/gpu_check/gpu_check.json"  # the one JSON file of results
    work_dir: str | None = None  # data, runs and exports of the checks; null = a work/ folder beside output
    checks: list[str] = field(default_factory=lambda: list(CHECKS))  # which checks run; the others are skipped
    export_ood_per_family: int = 12  # generated out-of-distribution images per family in the export's report
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    ddp: DdpSection = field(default_factory=DdpSection)
    parity: ParitySection = field(default_factory=ParitySection)
    serving: ServingSection = field(default_factory=ServingSection)
