"""The evaluate and export checks: the pipeline's own stages (`leafnet evaluate`, `leafnet export`) on the
checkpoint a training check wrote."""

from __future__ import annotations

from pathlib import Path

from leafnet.errors import LeafnetError
from leafnet.evaluation import EvalConfig, evaluate_checkpoint
from leafnet.export.config import CalibrationConfig, ExportConfig, GateConfig
from leafnet.export.exporter import export_checkpoint
from leafnet.extras import installed

# Quantized variants are gated on accuracy, calibration and unknown detection against eager (export's gates.*).
# A two-epoch model's int8 figures say nothing about a GPU, so those gates are opened; the fp32 gate (every
# TorchScript and ONNX logit within 1e-3 of eager) stays as it is.
OPEN_QUANTIZED_GATES = GateConfig(max_top1_drop=100.0, max_ece_increase=1.0, max_auroc_drop=1.0)


def evaluate_on(checkpoint: str, work_dir: Path, device: str, workers: int) -> dict:
    """Test-split evaluation on `device`; on CUDA also on the CPU, whose top-1 it must match within one image."""
    reports = {}
    for where in dict.fromkeys([device, "cpu"]):
        config = EvalConfig(
            checkpoint=checkpoint, split="test", device=where, workers=workers, output=str(work_dir / "eval" / where)
        )
        reports[where] = evaluate_checkpoint(config, log=lambda _: None)
    report = reports[device]
    details = {"device": device, "images": report["count"], "top1": report["top1"], "top5": report["top5"]}
    if device != "cpu":
        details["cpu_top1"] = reports["cpu"]["top1"]
        if abs(report["top1"] - reports["cpu"]["top1"]) > 1 / report["count"] + 1e-9:
            raise LeafnetError(
                f"test top-1 on {device} ({report['top1']:.4f}) and on the CPU ({reports['cpu']['top1']:.4f}) "
                "differ by more than one image"
            )
    return details


def export_for_check(checkpoint: str, work_dir: Path, ood_per_family: int) -> dict:
    """Every variant and, with leafnet[serve], the TorchScript archive the GPU image serves."""
    served = ["torchscript"] if installed("model_archiver") else []
    config = ExportConfig(
        checkpoint=checkpoint,
        output=str(work_dir / "exports" / "gpu_check"),
        model_store=str(work_dir / "model_store"),
        served=served,
        gates=OPEN_QUANTIZED_GATES,
        calibration=CalibrationConfig(ood_per_family=ood_per_family),
    )
    report = export_checkpoint(config, log=lambda _: None)
    return {
        "export_dir": config.output,
        "model_store": config.model_store,
        "archives": list(report["archives"]),
        "note": None if served else "no archive: torch-model-archiver is not installed (pip install 'leafnet[serve]')",
        "gates": "fp32 variants within 1e-3 of eager on the CPU; quantized variants' gates opened (a 2-epoch model)",
        "variants_on_cpu": {
            name: {key: variant[key] for key in ("max_abs_logit_diff", "top1_agreement", "test_top1")}
            for name, variant in report["variants"].items()
        },
        "export_seconds": report["seconds"],
    }
