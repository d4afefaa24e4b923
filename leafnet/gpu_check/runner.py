"""`leafnet gpu-check`: every check in order, each a section of one JSON file (docs/gpu.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from leafnet.errors import LeafnetError
from leafnet.gpu_check.config import CHECKS, GpuCheckConfig
from leafnet.gpu_check.data import prepared_data
from leafnet.gpu_check.environment import describe, require_device
from leafnet.gpu_check.parity import onnxruntime_parity, torchscript_parity
from leafnet.gpu_check.report import FAILED, Report
from leafnet.gpu_check.serving import serve_a_batch
from leafnet.gpu_check.stages import evaluate_on, export_for_check
from leafnet.gpu_check.training import train_in_process, train_under_torchrun

logger = logging.getLogger(__name__)


def run_gpu_check(config: GpuCheckConfig, log: Callable[[str], None] = logger.info) -> dict:
    """Runs the selected checks on `config.device` and writes the results file; returns its document."""
    require_device(config.device)
    unknown = sorted(set(config.checks) - set(CHECKS))
    if unknown:
        raise LeafnetError(f"unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}")
    output = Path(config.output)
    work = Path(config.work_dir) if config.work_dir else output.parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    device, train = config.device, config.train
    header = {"environment": describe(device), "config": asdict(config), "work_dir": str(work)}
    report = Report(output, header, list(config.checks), always=("data",))
    runs = work / "runs"

    data = report.run("data", lambda: prepared_data(config.data, work)) or {}
    root = data.get("root", "")
    report.run("train_bf16", lambda: train_in_process("train_bf16", root, runs, train, device), needs=("data",))
    report.run("train_fp16", lambda: train_in_process("train_fp16", root, runs, train, device), needs=("data",))
    report.run("ddp", lambda: train_under_torchrun(root, runs, train, config.ddp, device), needs=("data",))
    # The later checks use a checkpoint trained here: the bfloat16 run's, or the float16 one's on a GPU without bf16.
    source = "train_bf16" if report.ok("train_bf16") or not report.ok("train_fp16") else "train_fp16"
    checkpoint = str(runs / source / "checkpoints" / "best.pt")
    workers = train.workers
    report.run("evaluate", lambda: evaluate_on(checkpoint, work, device, workers), needs=(source,))
    exported = report.run(
        "export", lambda: export_for_check(checkpoint, work, config.export_ood_per_family), needs=(source,)
    )
    export_dir = Path(exported["export_dir"]) if exported else work
    report.run(
        "parity_torchscript",
        lambda: torchscript_parity(checkpoint, export_dir, root, device, config.parity),
        needs=("export",),
    )
    report.run(
        "parity_onnxruntime",
        lambda: onnxruntime_parity(export_dir, checkpoint, root, device, config.parity),
        needs=("export",),
    )
    archive = Path(exported["model_store"]) / "leafnet.mar" if exported else work
    report.run(
        "serving",
        lambda: serve_a_batch(archive, checkpoint, root, work, device, config.serving, config.parity.max_abs_logit),
        needs=("export",),
    )
    document = report.finish()
    summary = document["summary"]
    log(
        f"gpu-check on {device}: {len(summary['ok'])} ok, {len(summary['failed'])} failed, {len(summary['skipped'])} "
        f"skipped in {document['seconds']:.0f} s -> {output}"
    )
    for name, section in document["checks"].items():
        if section["status"] != "ok":
            log(f"  {name}: {section['status']}: {section['reason']}")
    return document


def exit_status(document: dict) -> int:
    """1 when a check failed (skipped ones do not count), else 0."""
    return 1 if any(section["status"] == FAILED for section in document["checks"].values()) else 0
