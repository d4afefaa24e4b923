"""Inference benchmark of an export directory: every variant in onnxruntime or TorchScript, and the
eager model as reference, at several batch sizes and intra-op thread counts, side by side in one run.

Each cell (variant x batch x threads) runs `warmup` calls, then timed calls for at least
`min_seconds` and `min_calls`; latency percentiles are per call (one batch), throughput is images
over total time. Speed-ups are ratios to fp32 ONNX in the same cell, measured minutes apart at most.
Inputs are a fixed random batch: the speed of these models does not depend on pixel values.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime
import torch

from leafnet.checkpoint import load_checkpoint
from leafnet.errors import LeafnetError
from leafnet.export.runtime import Predictor, load_predictor, torch_predictor
from leafnet.fsutil import atomic_write_bytes, sha256_file, write_json
from leafnet.models import model_from_checkpoint
from leafnet.progress import progress_bar

logger = logging.getLogger(__name__)

REFERENCE = "onnx"  # speed-ups are relative to fp32 ONNX
EAGER = "eager"


@dataclass
class InferenceBenchConfig:
    export_dir: str = "exports/leafnet"  # an export directory (with export.json)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])  # images per call
    threads: list[int] = field(default_factory=lambda: [1, 2])  # intra-op thread counts
    variants: list[str] = field(default_factory=list)  # default: every variant in export.json, plus eager
    eager: bool = True  # the checkpoint's model in PyTorch, when the checkpoint is still where export.json says
    warmup: int = 3  # calls before timing, per cell
    min_seconds: float = 0.5  # timed seconds per cell, at least (with min_calls): the demo pipeline runs 36 cells
    min_calls: int = 5  # timed calls per cell, at least
    output: str | None = None  # default: the export directory


def _validate(config: InferenceBenchConfig) -> None:
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise LeafnetError("batch_sizes must list sizes of at least 1")
    if not config.threads or min(config.threads) < 1:
        raise LeafnetError("threads must list counts of at least 1")
    if config.warmup < 0 or config.min_calls < 1 or config.min_seconds < 0:
        raise LeafnetError("warmup must be >= 0, min_calls >= 1 and min_seconds >= 0")


def _read_export(export_dir: Path) -> dict:
    path = export_dir / "export.json"
    if not path.is_file():
        raise LeafnetError(f"{path} not found: run scripts/export.py first (or pass the export directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LeafnetError(f"{path} is not valid JSON: {error}") from None


def time_calls(predict: Predictor, batch: np.ndarray, warmup: int, min_seconds: float, min_calls: int) -> list[float]:
    """Seconds per call, after `warmup` untimed calls."""
    for _ in range(warmup):
        predict(batch)
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < min_calls or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        predict(batch)
        durations.append(time.perf_counter() - t0)
    return durations


def summarise(durations: list[float], batch_size: int) -> dict:
    ms = np.asarray(durations) * 1000
    return {
        "calls": len(durations),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "images_per_s": round(batch_size * len(durations) / (ms.sum() / 1000), 1),
    }


def _predictor(name: str, export: dict, export_dir: Path, threads: int, eager_model) -> Predictor:
    torch.set_num_threads(threads)  # TorchScript and eager; onnxruntime sessions get their own setting
    if name == EAGER:
        return torch_predictor(eager_model)
    return load_predictor(export_dir / export["variants"][name]["file"], threads)


def _choose_variants(config: InferenceBenchConfig, export: dict, log) -> list[str]:
    available = list(export["variants"])
    eager_ok = Path(export["checkpoint"]).is_file() and sha256_file(export["checkpoint"]) == export["checkpoint_sha256"]
    if config.eager and not eager_ok:
        log(f"note: no eager reference: {export['checkpoint']} is missing or not the exported checkpoint")
    names = list(config.variants) or ([EAGER] if config.eager and eager_ok else []) + available
    unknown = [n for n in names if n not in available and not (n == EAGER and eager_ok)]
    if unknown:
        raise LeafnetError(f"unknown or unavailable variant {unknown[0]!r}; available: {', '.join(available)}")
    return names


def run_inference_benchmark(config: InferenceBenchConfig, log=logger.info) -> dict:
    _validate(config)
    export_dir = Path(config.export_dir)
    export = _read_export(export_dir)
    names = _choose_variants(config, export, log)
    size = export["preprocess"]["input_size"]
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in config.batch_sizes}
    log(f"benchmark: {len(names)} variants x {len(config.threads)} thread counts x {len(batches)} batch sizes")
    results: list[dict] = []
    bar = progress_bar(total=len(names) * len(config.threads) * len(batches), desc="benchmark")
    # Variants run side by side within each (threads, batch) cell, so a speed-up compares measurements
    # seconds apart rather than minutes: this VM's speed drifts.
    eager_model = model_from_checkpoint(load_checkpoint(export["checkpoint"])).float() if EAGER in names else None
    for threads in config.threads:
        predictors = {name: _predictor(name, export, export_dir, threads, eager_model) for name in names}
        for batch_size, batch in batches.items():
            for name, predict in predictors.items():
                bar.set_postfix_str(f"{name} b={batch_size} t={threads}")
                durations = time_calls(predict, batch, config.warmup, config.min_seconds, config.min_calls)
                cell = {"variant": name, "threads": threads, "batch": batch_size}
                results.append({**cell, **summarise(durations, batch_size)})
                bar.update()
    bar.close()
    results.sort(key=lambda r: (names.index(r["variant"]), r["threads"], r["batch"]))  # table order
    _add_speedups(results)
    report = {
        "export_dir": str(export_dir),
        "model": export["model"],
        "input": [3, size, size],
        "inputs": "fixed random batch (seed 0)",
        "warmup": config.warmup,
        "min_seconds": config.min_seconds,
        "variants": {name: _variant_facts(name, export) for name in names},
        "results": results,
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "versions": {"torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__},
    }
    output = Path(config.output) if config.output else export_dir
    write_json(output / "benchmark.json", report)
    table = markdown_report(report)
    atomic_write_bytes(output / "benchmark.md", table.encode())
    figure = benchmark_figure(report)
    figure.savefig(output / "benchmark.png", dpi=120)
    plt.close(figure)
    log(table)
    log(f"wrote {output / 'benchmark.json'}, benchmark.md, benchmark.png")
    return report


def _variant_facts(name: str, export: dict) -> dict:
    if name == EAGER:
        return {"file": export["checkpoint"], "bytes": None, **export["eager"]}
    v = export["variants"][name]
    return {"file": v["file"], "bytes": v["bytes"], "test_top1": v["test_top1"], "test_top5": v["test_top5"]}


def _add_speedups(results: list[dict]) -> None:
    reference = {(r["threads"], r["batch"]): r["images_per_s"] for r in results if r["variant"] == REFERENCE}
    for r in results:
        base = reference.get((r["threads"], r["batch"]))
        r["speedup_vs_onnx"] = round(r["images_per_s"] / base, 2) if base else None


def markdown_report(report: dict) -> str:
    host = report["host"]
    lines = [
        f"# Inference benchmark: {report['model']}, input {'x'.join(map(str, report['input']))}",
        "",
        f"{host['cpus']} CPUs ({host['processor']}); torch {report['versions']['torch']}, onnxruntime "
        f"{report['versions']['onnxruntime']}; {report['inputs']}; {report['warmup']} warm-up calls, then "
        f">= {report['min_seconds']} s per cell. Latency is per call (one batch).",
        "",
        "| variant | threads | batch | p50 ms | p90 ms | p99 ms | img/s | vs fp32 ONNX | MB | test top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        facts = report["variants"][r["variant"]]
        size = f"{facts['bytes'] / 1e6:.1f}" if facts["bytes"] else "-"
        speedup = f"{r['speedup_vs_onnx']:.2f}x" if r["speedup_vs_onnx"] else "-"
        lines.append(
            f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['images_per_s']:.0f} | {speedup} | {size} | {facts['test_top1']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def benchmark_figure(report: dict):
    """Left: throughput by batch size (most threads). Right: throughput at one batch size, with the
    accuracy and size each variant pays for it."""
    results = report["results"]
    threads = max(r["threads"] for r in results)
    batches = sorted({r["batch"] for r in results})
    focus = 8 if 8 in batches else batches[-1]
    names = list(report["variants"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    for name in names:
        rows = [r for r in results if r["variant"] == name and r["threads"] == threads]
        left.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s (log)")
    left.set_title(f"Throughput, {threads} thread(s)")
    left.set_xticks(batches, [str(b) for b in batches])
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
    left.yaxis.set_major_formatter(plain)
    left.yaxis.set_minor_formatter(plain)
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="best")
    cells = {r["variant"]: r for r in results if r["threads"] == threads and r["batch"] == focus}
    speeds = [cells[name]["images_per_s"] for name in names]
    bars = right.barh(range(len(names)), speeds, color=[f"C{i}" for i in range(len(names))])
    right.set_yticks(range(len(names)), names)
    right.invert_yaxis()
    for bar, name in zip(bars, names, strict=True):
        facts, cell = report["variants"][name], cells[name]
        size = f" · {facts['bytes'] / 1e6:.1f} MB" if facts["bytes"] else ""
        speedup = f" · {cell['speedup_vs_onnx']:.2f}x" if cell["speedup_vs_onnx"] else ""
        label = f" top-1 {facts['test_top1']:.2%}{size}{speedup}"
        right.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
    right.set_xlim(0, max(speeds) * 1.6)
    right.set(xlabel="images / s")
    right.set_title(f"Batch {focus}, {threads} thread(s): speed, test top-1, size, vs fp32 ONNX")
    right.grid(True, axis="x", alpha=0.3)
    figure.suptitle(f"{report['model']} {'x'.join(map(str, report['input']))} on {report['host']['cpus']} CPUs")
    figure.tight_layout()
    return figure
