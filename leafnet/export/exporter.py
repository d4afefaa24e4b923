"""The export stage: checkpoint -> every variant, verified against eager, then archived for TorchServe.

Everything is written to staging first: the export directory appears only when all variants pass
their gates, and the .mar archives replace those in the model store only after that.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch.utils.data import DataLoader, Subset

from leafnet.calibration import plot_reliability, softmax
from leafnet.checkpoint import load_checkpoint, versions
from leafnet.data.dataset import ManifestDataset
from leafnet.data.ood import leaves_of
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.errors import LeafnetError
from leafnet.export import calibrate, packaged, summary
from leafnet.export.archive import build_archive
from leafnet.export.calibrate import run_split, score_comparison, variant_report
from leafnet.export.config import ExportConfig
from leafnet.export.naming import VARIANT_BY_NAME, VARIANTS, archive_names
from leafnet.export.onnx_export import export_onnx
from leafnet.export.parity import TopK, calibration_gate_failures, compare_logits, gate_failures
from leafnet.export.quantize import (
    check_int8_config,
    preprocess_for_quantization,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from leafnet.export.runtime import load_outputs, torch_outputs
from leafnet.export.scored import OUTPUT_NAMES, ScoredClassifier
from leafnet.export.torchscript import export_dynamic_quantized_torchscript, export_torchscript
from leafnet.extras import require
from leafnet.fsutil import atomic_directory, is_replaceable, sha256_file, write_json
from leafnet.models import model_from_checkpoint
from leafnet.monitoring.reference import REFERENCE_FILE, build_reference, top1_probability
from leafnet.serving.calibration import CALIBRATION_FILE, calibration_document

logger = logging.getLogger(__name__)

MARKER = "export.json"
RELIABILITY_FILE = "reliability.png"


def _spread(dataset: ManifestDataset, count: int) -> Subset:
    """`count` images spread evenly over the split (manifests are sorted by class), always the same ones."""
    count = min(count, len(dataset))
    return Subset(dataset, np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist())


def _batches(dataset, batch_size: int, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    for images, targets in loader:
        yield images.numpy(), targets.numpy()


def _resolve(path: str | None, default: Path, what: str) -> Path:
    resolved = Path(path) if path else default
    if not resolved.is_file():
        raise LeafnetError(f"{what} not found: {resolved}")
    return resolved


def _validate(config: ExportConfig) -> None:
    """Option checks that need no file: fail before any work."""
    unknown = [name for name in config.served if name not in VARIANT_BY_NAME]
    if unknown:
        raise LeafnetError(f"unknown served variant {unknown[0]!r}; choose from {', '.join(VARIANT_BY_NAME)}")
    if config.served:  # packing archives needs torch-model-archiver; the model files alone do not
        purpose = f"packing served={config.served} as .mar archives (served=[] exports the model files alone)"
        require("serve", purpose, parts=("model_archiver",))
    for key in ("parity_images", "trace_batch", "batch_size", "drift_reference_images"):
        if getattr(config, key) < 1:
            raise LeafnetError(f"{key} must be at least 1, got {getattr(config, key)}")
    if config.trace_batch < 2:
        raise LeafnetError("trace_batch must be at least 2, so no batch size of 1 is baked into the trace")
    if config.workers < 0 or config.threads < 0:
        raise LeafnetError("workers and threads must not be negative")
    if config.gates.fp32_max_abs_logit < 0 or config.gates.max_top1_drop < 0:
        raise LeafnetError("gates must not be negative")
    if config.opset < 18:
        raise LeafnetError(f"opset {config.opset} is too old: the dynamo exporter needs opset >= 18")
    check_int8_config(config.int8)
    calibrate.check_config(config.calibration)


@dataclass
class _Inputs:
    """What the stage reads before writing anything: checked up front, so bad input costs no work."""

    checkpoint: dict
    run_name: str
    data_root: Path
    spec: PreprocessSpec
    classes: list[str]
    splits: dict[str, ManifestDataset]
    handler: Path
    model_config: Path
    output: Path


def _read_inputs(config: ExportConfig) -> _Inputs:
    _validate(config)
    checkpoint = load_checkpoint(config.checkpoint)
    try:
        run_name = checkpoint["config"]["train"]["name"]
        data_root = Path(config.data or checkpoint["config"]["data"]["root"])
        spec = PreprocessSpec.from_checkpoint(checkpoint, data_root)
        classes = checkpoint["class_names"]
    except (KeyError, TypeError) as error:
        raise LeafnetError(f"{config.checkpoint} lacks {error} that export needs; re-train with this leafnet") from None
    handler = _resolve(config.handler, packaged.ENTRY_POINT, "handler")
    model_config = _resolve(config.model_config, packaged.MODEL_CONFIG, "model config")
    output = Path(config.output or Path("exports") / run_name)
    if not is_replaceable(output, MARKER):
        raise LeafnetError(f"{output} exists and is not a leafnet export (no {MARKER}); choose another output=")
    transform = eval_transform(spec)
    splits = {split: ManifestDataset(data_root, split, transform) for split in ("train", "val", "test")}
    for split, dataset in splits.items():
        if dataset.classes != classes:
            raise LeafnetError(f"{data_root} has other classes than the checkpoint; pass data= the run's data")
        if len(dataset) == 0:
            raise LeafnetError(f"split {split!r} of {data_root} is empty; export needs train, val and test images")
    return _Inputs(checkpoint, run_name, data_root, spec, classes, splits, handler, model_config, output)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Timer:
    """Times each step and prints one progress line per step."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, action: Callable[[], object], note: str = "") -> object:
        """Runs `action` as step `name` and returns what it returns."""
        t0 = time.perf_counter()
        try:
            result = action()
        except LeafnetError:
            raise
        except Exception as error:  # exporters and quantizers fail in many ways; name the step
            raise LeafnetError(f"{name} failed: {_first_line(error)}") from None
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.log(f"  {name:<22} {self.seconds[name]:6.1f}s{note}")
        return result


def _write_variants(model, example: torch.Tensor, stage: Path, scratch: Path, calibration, config, timer) -> None:
    """Every variant of `model` (the ScoredClassifier: two outputs) into `stage`."""
    prepared = scratch / "model.prepared.onnx"
    timer("torchscript", lambda: export_torchscript(model, example, stage / "model.ts.pt"))
    timer("torchscript-dynq", lambda: export_dynamic_quantized_torchscript(model, example, stage / "model.dynq.ts.pt"))
    timer("onnx", lambda: export_onnx(model, example, stage / "model.onnx", config.opset, OUTPUT_NAMES))
    timer("onnx-prepare", lambda: preprocess_for_quantization(stage / "model.onnx", prepared))
    timer("onnx-dynq", lambda: quantize_onnx_dynamic(prepared, stage / "model.dynq.onnx"))
    batches = (images for images, _ in _batches(calibration, 16, config.workers))
    timer("onnx-int8", lambda: quantize_onnx_static(prepared, stage / "model.int8.onnx", batches, config.int8))


def _measure(model, eager, stage: Path, parity_images: np.ndarray, splits, fitted, ood, config: ExportConfig, timer):
    """Logit agreement on the parity images with eager, then every variant (and eager) over the val split
    (thresholds), the test split (accuracy, calibration, acceptance) and the generated out-of-distribution set.
    Returns (agreements, {name: accuracy}, {name: calibration and OOD report}, score comparison, eager's
    calibrated top-1 probability on each test image: the drift reference's confidence, and the reliability
    diagram's curves with the test split's targets, drawn once the gates have said what ships)."""
    try:
        predictors = {v.name: load_outputs(stage / v.file, config.threads) for v in VARIANTS}
    except Exception as error:
        raise LeafnetError(f"cannot load an exported variant back: {_first_line(error)}") from None
    reference = eager(parity_images)[0]
    agreements = {name: compare_logits(reference, predict(parity_images)[0]) for name, predict in predictors.items()}
    batches = {split: partial(_batches, splits[split], config.batch_size, config.workers) for split in ("val", "test")}
    runs = {}
    for split, source, note in (
        ("val", batches["val"], f"({len(splits['val'])} images: thresholds)"),
        ("test", batches["test"], f"({len(splits['test'])} images: accuracy, calibration)"),
        ("ood", ood, "(generated out-of-distribution images)"),
    ):
        runs[split] = timer(
            f"{split} outputs", lambda source=source: run_split(predictors, fitted, model, source), f"  {note}"
        )
    (val, val_f, val_z, _), (test, test_f, test_z, test_targets), (out, ood_f, ood_z, ood_families) = (
        runs["val"],
        runs["test"],
        runs["ood"],
    )
    accuracy, reports = {}, {}
    for name in ["eager", *predictors]:
        meter = TopK()
        meter.update(test[name].logits, test_targets)
        accuracy[name] = meter.result()
        reports[name] = variant_report(
            val[name], test[name], test_targets, out[name], ood_families, fitted.temperature, config.calibration
        )
    comparison = score_comparison(
        fitted, (val_f, val_z), (test_f, test_z), (ood_f, ood_z), ood_families, config.calibration
    )
    curves = [  # (label, the variant drawn, its calibrated probabilities on the test split)
        ("before (T = 1)", "eager", softmax(test["eager"].logits * fitted.temperature)),
        (f"after (T = {fitted.temperature:.2f})", "eager", softmax(test["eager"].logits)),
        ("onnx-int8, after", "onnx-int8", softmax(test["onnx-int8"].logits)),
    ]
    confidence = top1_probability(test["eager"].logits)
    return agreements, accuracy, reports, comparison, confidence, (curves, test_targets)


def _plot_reliability(curves: list[tuple], targets: np.ndarray, report: dict, path: Path) -> None:
    """reliability.png: eager's curves, and each variant's that ships; a withheld variant's is left out, as its
    file is (`_withhold_or_fail`)."""
    shipped = {
        label: (probabilities, targets)
        for label, variant, probabilities in curves
        if variant == "eager" or variant in report["variants"]
    }
    plot_reliability(shipped, path, "test split, 15 bins")


def export_checkpoint(config: ExportConfig, log: Callable[[str], None] = logger.info) -> dict:
    """Writes every variant, drift_reference.json and export.json to `output`, and the served variants' .mar
    (each with the drift reference) to the model store."""
    started = time.perf_counter()
    inputs = _read_inputs(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        model = model_from_checkpoint(inputs.checkpoint).float()
    except Exception as error:  # an architecture this timm lacks, or weights that do not fit it
        raise LeafnetError(f"cannot rebuild the model of {config.checkpoint}: {_first_line(error)}") from None
    parity_images, _ = next(_batches(_spread(inputs.splits["val"], config.parity_images), config.parity_images, 0))
    example = torch.from_numpy(np.resize(parity_images, (config.trace_batch, *parity_images.shape[1:])))
    checkpoint_sha = sha256_file(config.checkpoint)
    version = config.version or checkpoint_sha[:12]
    log(
        f"export: {inputs.checkpoint['model_name']} ({len(inputs.classes)} classes, {inputs.spec.input_size} px) "
        f"from {config.checkpoint} -> {inputs.output}"
    )
    timer = _Timer(log)
    model_store = Path(config.model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    for name in archive_names(config.archive_name, config.served):
        if (model_store / name).exists() and not (model_store / name).is_file():
            raise LeafnetError(f"{model_store / name} exists and is not a file; move it away")
    split_batches = {
        split: partial(_batches, inputs.splits[split], config.batch_size, config.workers) for split in inputs.splits
    }
    fitted = timer(
        "calibration",
        lambda: calibrate.fit(
            model, split_batches["train"], split_batches["val"], len(inputs.classes), config.calibration
        ),
        "  (temperature on val, feature statistics on train)",
    )
    calibrate.warn_small_val(fitted.val_images, config.calibration)
    scored = ScoredClassifier(model, fitted.head).eval()
    ood = timer(
        "ood set",
        lambda: calibrate.ood_batches(
            inputs.spec.to_dict(),
            leaves_of(inputs.data_root),
            config.calibration,
            config.batch_size,
        ),
        f"  ({config.calibration.ood_per_family} per family, seed {config.calibration.ood_seed})",
    )
    with tempfile.TemporaryDirectory(prefix=".export-", dir=model_store) as archive_stage:
        with atomic_directory(inputs.output) as stage, tempfile.TemporaryDirectory(prefix="leafnet-export-") as tmp:
            scratch = Path(tmp)
            calibration = _spread(inputs.splits["train"], config.int8.calibration_images)
            _write_variants(scored, example, stage, scratch, calibration, config, timer)
            agreements, accuracy, reports, comparison, confidence, reliability = _measure(
                model, torch_outputs(scored), stage, parity_images, inputs.splits, fitted, ood, config, timer
            )
            report = _report(
                config, inputs, stage, checkpoint_sha, version, len(parity_images), agreements, accuracy, timer.seconds
            )
            _add_calibration(report, fitted, reports, comparison, config)
            _log_table(report, log)
            summary.log_calibration(report, log)
            failures = {
                v.name: gate_failures(
                    v.name,
                    v.quantized,
                    agreements[v.name],
                    accuracy[v.name]["top1"],
                    accuracy["eager"]["top1"],
                    config.gates,
                    len(inputs.splits["test"]),
                )
                + calibration_gate_failures(v.name, v.quantized, reports[v.name], reports["eager"], config.gates)
                for v in VARIANTS
            }
            _withhold_or_fail(failures, config.served, report, stage, log)
            _plot_reliability(*reliability, report, stage / RELIABILITY_FILE)
            write_json(stage / CALIBRATION_FILE, _calibration_document(fitted, reports, report, config))
            extras = _write_extras(scratch, inputs)
            unknown_rate = round(1 - reports["eager"]["test_accepted"], 4)
            report["drift_reference"] = timer(
                "drift reference", lambda: _write_reference(stage, inputs, confidence, version, config, unknown_rate)
            )
            extras += [stage / REFERENCE_FILE, stage / CALIBRATION_FILE]
            report["archives"] = _pack_archives(config, inputs, stage, extras, version, Path(archive_stage), timer)
            report["seconds"] = round(time.perf_counter() - started, 1)
            write_json(stage / MARKER, report)
        # The export directory is now in place; the archives follow it into the store.
        for name in report["archives"]:
            os.replace(Path(archive_stage) / name, model_store / name)
    archives = (
        f"; {', '.join(report['archives'])} in {model_store}" if report["archives"] else " (no archives: served=[])"
    )
    log(f"export: done in {report['seconds']:.0f}s -> {inputs.output}{archives}")
    return report


def _report(config, inputs, stage, checkpoint_sha, version, parity_count, agreements, accuracy, seconds) -> dict:
    def scores(name: str) -> dict:
        return {"test_top1": round(accuracy[name]["top1"], 4), "test_top5": round(accuracy[name]["top5"], 4)}

    return {
        "checkpoint": str(config.checkpoint),
        "checkpoint_sha256": checkpoint_sha,
        "version": version,
        "model": inputs.checkpoint["model_name"],
        "num_classes": len(inputs.classes),
        "data": str(inputs.data_root),
        "preprocess": inputs.spec.to_dict(),
        "parity_images": parity_count,
        "test_images": len(inputs.splits["test"]),
        "gates": asdict(config.gates),
        "int8": asdict(config.int8),
        "eager": scores("eager"),
        "variants": {
            v.name: {
                "file": v.file,
                "quantized": v.quantized,
                "bytes": (stage / v.file).stat().st_size,
                "sha256": sha256_file(stage / v.file),
                "max_abs_logit_diff": agreements[v.name].max_abs_logit,
                "top1_agreement": round(agreements[v.name].top1_agreement, 4),
                **scores(v.name),
                "export_seconds": seconds.get(v.name),
            }
            for v in VARIANTS
        },
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }


def _pack_archives(config, inputs, stage: Path, extras: list[Path], version: str, into: Path, timer) -> dict:
    """One .mar per served variant, built in `into`: {archive file name: variant, bytes, sha256}."""
    archives = {}
    for name, archive in zip(config.served, archive_names(config.archive_name, config.served), strict=True):
        archive_name = archive.removesuffix(".mar")
        model_file = stage / VARIANT_BY_NAME[name].file
        handler, model_config = inputs.handler, inputs.model_config
        build = partial(build_archive, archive_name, version, model_file, handler, extras, model_config, into)
        timer(f"{archive_name}.mar", build)
        archive = into / f"{archive_name}.mar"
        archives[archive.name] = {"variant": name, "bytes": archive.stat().st_size, "sha256": sha256_file(archive)}
    return archives


def _write_extras(scratch: Path, inputs: _Inputs) -> list[Path]:
    """What the handler reads beside the model: labels, the preprocessing spec, and the leafnet.serving
    package (as `leafnet_serving`: a folder whose entries the archiver copies into the archive's root)."""
    extras = scratch / "extra"
    extras.mkdir()
    write_json(extras / "index_to_name.json", {str(i): name for i, name in enumerate(inputs.classes)})
    write_json(extras / "preprocess.json", inputs.spec.to_dict())
    package_root = scratch / "package"
    packaged.copy_serving_package(package_root)
    return [extras / "index_to_name.json", extras / "preprocess.json", package_root]


def _write_reference(stage: Path, inputs: _Inputs, confidence: np.ndarray, version: str, config, unknown_rate) -> dict:
    """drift_reference.json: what scripts/drift_report.py compares served requests with (docs/serving.md).
    Returns its summary for export.json."""
    background = tuple(inputs.spec.background)  # the handler's, from preprocess.json
    reference = build_reference(
        inputs.data_root,
        inputs.classes,
        background,
        confidence,
        version,
        config.drift_reference_images,
        unknown_rate=unknown_rate,
    )
    write_json(stage / REFERENCE_FILE, reference)
    return {
        "file": REFERENCE_FILE,
        "images": reference["images"],
        "features": sorted(reference["features"]),
        "confidence_images": len(reference["confidence"]),
        "sha256": sha256_file(stage / REFERENCE_FILE),
    }


def _log_table(report: dict, log: Callable[[str], None]) -> None:
    eager = report["eager"]
    log(f"  {'variant':<17} {'MB':>6} {'max|Δlogit|':>11} {'agree':>6} {'top-1':>7} {'top-5':>7}")
    log(f"  {'eager':<17} {'':>6} {'':>11} {'':>6} {eager['test_top1']:7.2%} {eager['test_top5']:7.2%}")
    for name, v in report["variants"].items():
        log(
            f"  {name:<17} {v['bytes'] / 1e6:6.1f} {v['max_abs_logit_diff']:11.2e} {v['top1_agreement']:6.1%} "
            f"{v['test_top1']:7.2%} {v['test_top5']:7.2%}"
        )


def _add_calibration(report: dict, fitted, reports: dict, comparison: dict, config: ExportConfig) -> None:
    """export.json's calibration and OOD sections: eager's at the top, each variant's beside its accuracy."""
    report["calibration"] = {
        **calibrate.config_summary(fitted, config.calibration),
        "eager": reports["eager"]["calibration"],
        "reliability": RELIABILITY_FILE,
    }
    report["ood"] = {
        "score": config.calibration.ood_score,
        "eager": {key: value for key, value in reports["eager"].items() if key != "calibration"},
        "scores": comparison,
        "targets": summary.targets(reports["eager"]),
    }
    for name, variant in report["variants"].items():
        variant["calibration"] = reports[name]["calibration"]
        variant["ood"] = {key: value for key, value in reports[name].items() if key != "calibration"}


def _withhold_or_fail(failures: dict[str, list[str]], served: list[str], report: dict, stage: Path, log) -> None:
    """A variant that fails a gate is not written. An fp32 variant that does (a broken export, not a lossy one)
    or a served one fails the whole export, nothing written; an unserved quantized one is withheld: its file
    removed from the stage, its entry moved from report["variants"] to report["withheld"] with the reasons,
    and one line says so, so the model and the variants that passed still ship."""
    fatal = [
        reason
        for name, reasons in failures.items()
        for reason in reasons
        if not VARIANT_BY_NAME[name].quantized or name in served
    ]
    if fatal:
        raise LeafnetError("parity gate failed, nothing written: " + "; ".join(fatal))
    report["withheld"] = {}
    for name, reasons in failures.items():
        if reasons:
            (stage / VARIANT_BY_NAME[name].file).unlink()
            scores = report["variants"].pop(name)
            dropped = ("file", "bytes", "sha256")  # of a file that is not written
            report["withheld"][name] = {"reasons": reasons, **{k: v for k, v in scores.items() if k not in dropped}}
            log(f"  withheld (not written): {'; '.join(reasons)}")


def _calibration_document(fitted, reports: dict, report: dict, config: ExportConfig) -> dict:
    """calibration.json (leafnet/serving/calibration.py reads it): a threshold per model file."""
    thresholds = {v["file"]: reports[name]["threshold"] for name, v in report["variants"].items()}
    return calibration_document(
        fitted.temperature,
        config.calibration.ood_score,
        thresholds,
        config.calibration.accept,
        accept_confidence=config.calibration.accept_confidence,
        thresholds_fitted_on=f"val split, {fitted.val_images} images",
    )
