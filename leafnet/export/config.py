"""Options of the export stage and their defaults: the one source of them (`scripts/export.py --help` and
the annotated config/export.yaml are rendered from these classes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GateConfig:
    fp32_max_abs_logit: float = 1e-3  # largest |logit - eager logit| an fp32 variant may show
    max_top1_drop: float = 1.0  # test top-1 points a quantized variant may lose against eager (nearest whole image)
    max_ece_increase: float = 0.02  # calibrated test ECE a quantized variant may add to eager's
    max_auroc_drop: float = 0.05  # unknown-detection AUROC (generated set) a quantized variant may lose to eager


@dataclass
class Int8Config:
    # uint8 activations: int8 ones were no faster than fp32 where measured (docs/export.md)
    activation_type: str = "QUInt8"
    # uint8 weights: x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) multiply uint8 x int8 with an
    # instruction (VPMADDUBSW) that saturates its 16-bit sums, so int8 weights can wreck accuracy on the CPU
    # that serves an archive, whatever the one that exported it showed. uint8 x uint8 never saturates: slower
    # than uint8 x int8 on VNNI, correct everywhere (docs/export.md). QInt8 for a serving CPU known to have VNNI.
    weight_type: str = "QUInt8"
    per_channel: bool = True  # a scale per convolution filter rather than per tensor
    reduce_range: bool = False  # 7-bit weights: the usual cure for saturation, too coarse for small models
    calibration_images: int = 256  # from the train split, eval-transformed like served images
    calibration_method: str = "MinMax"  # onnxruntime's CalibrationMethod: MinMax | Entropy | Percentile | Distribution


@dataclass
class CalibrationConfig:
    fit_temperature: bool = True  # fit a temperature on the val split (NLL) into the logits; false: T = 1
    # the out-of-distribution score in every variant: msp | energy | mahalanobis (penultimate features,
    # nearest class mean, shared covariance); docs/calibration.md compares them
    ood_score: str = "mahalanobis"
    accept: float = 0.95  # share of in-distribution images the unknown threshold accepts
    # probability that new in-distribution images are accepted at least `accept` of the time (a tolerance
    # bound from the val split's order statistics); 0: the val split's plain quantile, short half of the time
    accept_confidence: float = 0.9
    ood_per_family: int = 60  # generated out-of-distribution images per family (leafnet/data/ood.py), for the report
    ood_seed: int = 0  # the generated set is a pure function of this seed (and the test split's leaves)


@dataclass
class ExportConfig:
    checkpoint: str = "runs/leafnet/checkpoints/best.pt"  # the leafnet checkpoint to export
    output: str | None = None  # default: exports/<run name>
    data: str | None = None  # default: the data root the checkpoint was trained on
    model_store: str = "model_store"  # where the .mar archives go
    archive_name: str = "leafnet"  # <name>.mar holds the first served variant, <name>-<variant>.mar the others
    version: str | None = None  # model version in the archives; default: first 12 hex digits of the checkpoint's sha256
    # variants packed as TorchServe archives (leafnet.export.naming names them; [] for none, and then
    # export needs no leafnet[serve])
    served: list[str] = field(default_factory=lambda: ["torchscript", "onnx-int8"])
    handler: str | None = None  # default: leafnet/serving/leafnet_handler.py, the installed package's
    model_config: str | None = None  # default: leafnet/serving/model-config.yaml, the installed package's
    parity_images: int = 64  # fixed val images compared logit by logit with eager
    trace_batch: int = 2  # TorchScript is traced at this batch size and checked at another
    opset: int = 18  # ONNX opset (the dynamo exporter needs 18 or later)
    batch_size: int = 64  # for the accuracy pass over the test split
    workers: int = 2  # DataLoader workers for the accuracy pass
    drift_reference_images: int = 1000  # train images, seeded sample, whose statistics go into drift_reference.json
    threads: int = 0  # intra-op threads for torch and onnxruntime; 0 = all cores
    gates: GateConfig = field(default_factory=GateConfig)
    int8: Int8Config = field(default_factory=Int8Config)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
