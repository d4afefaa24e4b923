"""Predict offline with an export, a .mar or a checkpoint: `leafnet predict MODEL INPUTS... [--output
preds.csv|preds.jsonl] [--top-k K] [--truth manifest.csv] [key=value ...]`.

The answers TorchServe would give (the handler's own decoding, preprocessing and answers), without a server.
MODEL: an export directory (exports/leafnet; variant=auto times its variants and takes the fastest here),
a .mar archive or a training checkpoint .pt. INPUTS: image files, folders (their images, recursively), a
.txt list of paths (one a line, relative to the list) or - (paths on stdin).

Prints a table (path, top-1 label, probability), or with --output writes every image's top-k labels and
probabilities and the model version as CSV or JSON Lines (by the extension). Images that cannot be used
(not an image, damaged, too large) are listed with the reason and counted; the run goes on. When the truth
is known (every input in a folder named like a class, or --truth with prepare's path,label columns), also
top-1/top-5 and per-class precision/recall/F1; with --output, beside it: <name>.audit.json and
<name>.confusion.png.

tta=flip answers each image with the mean of its and its mirror's probabilities (two passes; the server
makes one): the outputs name the mode, and the audit gives its figures beside the single pass's.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from leafnet.cli import logs_to_stderr
from leafnet.config import load_config
from leafnet.errors import LeafnetError
from leafnet.predict import DEFAULT_BATCH_SIZE, Outcome, Predictor
from leafnet.predict_inputs import collect_inputs
from leafnet.predict_output import beside, checked_output, table, write_output
from leafnet.predict_truth import truth_from_folders, truth_from_manifest
from leafnet.progress import progress_bar

logger = logging.getLogger(__name__)

FLAGS = {"--output": "output", "--top-k": "top_k", "--truth": "truth"}
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
AUDIT_TOP = 5  # the audit's top-5 needs that many classes in every answer


@dataclass
class PredictConfig:
    # an export directory's variant: torchscript, torchscript-dynq, onnx, onnx-dynq, onnx-int8, or auto (the
    # fastest on this machine, timed side by side at the start)
    variant: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE  # images per forward pass
    threads: int = 0  # the model's intra-op threads; 0: one per core this process may use
    decode_threads: int = 0  # threads reading and decoding images while the model runs; 0: one per core but one
    device: str = "auto"  # auto | cpu | cuda | cuda:N, for TorchScript and checkpoints (ONNX runs on the CPU)
    # images with more pixels are refused; 0: as served (the archive's max_image_pixels, else derived from the
    # preprocessing: 12.2 MP for any model today)
    max_image_pixels: int = 0
    prepare_timeout_s: float = 0.0  # seconds one image may take to decode and fit; 0: no limit (a server's guard)
    # test-time augmentation: none (one pass, the server's answers) or flip (the mean of the image's and its
    # mirror's probabilities: two passes; offline only, the server makes one)
    tta: str = "none"


@dataclass
class Arguments:
    model: str
    inputs: list[str]
    overrides: list[str]
    output: str | None = None
    top_k: int | None = None
    truth: str | None = None


def parse(argv: list[str]) -> Arguments:
    """MODEL, INPUTS and the flags; key=value and --config FILE go to load_config. An argument that looks like
    key=value but is an existing path is a path."""
    positional, overrides, flags = [], [], {}
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in FLAGS:
            value = value if has_value else next(args, None)
            if value is None:
                raise LeafnetError(f"{name} needs a value")
            flags[FLAGS[name]] = value
        elif name == "--config":
            overrides += [arg] if has_value else [arg, next(args, None) or ""]
        elif arg.startswith("-") and arg != "-":
            raise LeafnetError(f"unknown option {arg}: flags are {', '.join(FLAGS)}; options are key=value")
        elif OVERRIDE.match(arg) and not Path(arg).exists():
            overrides.append(arg)
        else:
            positional.append(arg)
    if len(positional) < 2:
        raise LeafnetError("usage: leafnet predict MODEL INPUTS... (images, folders, a .txt list or -)")
    top_k = flags.pop("top_k", None)
    if top_k is not None and not (top_k.isdigit() and int(top_k) >= 1):
        raise LeafnetError(f"--top-k {top_k}: a whole number of at least 1")
    top_k = int(top_k) if top_k is not None else None
    return Arguments(positional[0], positional[1:], overrides, top_k=top_k, **flags)


def main(argv: list[str]) -> None:
    args = parse(argv)
    config = load_config(PredictConfig, args.overrides)
    output = checked_output(args.output)
    if output is None:  # stdout carries the predictions: `leafnet predict M dir > preds.txt` gets only them
        logs_to_stderr()
    files = collect_inputs(args.inputs, sys.stdin)  # every path checked before the model loads
    if not files:
        raise LeafnetError(f"no images in {' '.join(args.inputs)} (image files: .png, .jpg, .webp, ...)")
    if args.truth and not Path(args.truth).is_file():
        raise LeafnetError(f"--truth {args.truth} not found")
    predictor = Predictor.load(
        args.model, config.variant, args.top_k, config.threads, config.device, config.batch_size,
        config.decode_threads, config.max_image_pixels or None, config.prepare_timeout_s or None, config.tta,
    )  # fmt: skip
    truth = (
        truth_from_manifest(Path(args.truth), files, predictor.labels)
        if args.truth
        else truth_from_folders(files, predictor.labels)
    )
    shown = predictor.top_k
    if truth is not None:
        predictor.top_k = max(shown, min(AUDIT_TOP, len(predictor.labels)))
    started = time.perf_counter()
    outcomes = []
    with progress_bar(total=len(files), desc="predict", unit="img") as bar:
        for outcome in predictor.outcomes(files):
            outcomes.append(outcome)
            bar.update()
    seconds = time.perf_counter() - started
    refused = [outcome for outcome in outcomes if outcome.error is not None]
    if len(refused) == len(outcomes):
        first = refused[0]
        raise LeafnetError(f"none of the {len(outcomes)} input(s) could be used, e.g. {first.name}: {first.error}")
    if output is not None:
        write_output(output, outcomes, shown, truth)
    else:
        sys.stdout.write(table(outcomes))
    _list_refused(refused)
    why = " (the reasons: stderr)" if refused else ""
    where = f" -> {output}" if output else ""
    augmented = "" if config.tta == "none" else f" (tta={config.tta})"
    logger.info(
        "predict: %d images, %d answered%s%s, %d refused%s, in %.1f s: %.0f images/s%s",
        len(outcomes), len(outcomes) - len(refused), augmented, _unknown_count(outcomes), len(refused), why, seconds,
        len(outcomes) / seconds, where,
    )  # fmt: skip
    if truth is not None:
        _report_audit(predictor, outcomes, truth, output, args.truth or "the folders' names")


def _unknown_count(outcomes: list[Outcome]) -> str:
    """ ", K unknown (x%)" over the answered images, or nothing for a model without calibration."""
    flags = [o.answer["unknown"] for o in outcomes if o.answer is not None and o.answer.get("unknown") is not None]
    return f" ({sum(flags)} unknown, {sum(flags) / len(flags):.1%})" if flags else ""


def _list_refused(refused: list[Outcome]) -> None:
    for outcome in refused:
        print(f"refused: {outcome.name}: {outcome.error}", file=sys.stderr)


def _report_audit(predictor: Predictor, outcomes: list[Outcome], truth: list[str], output: Path | None, source) -> None:
    from leafnet.predict_audit import audit, per_class_table, write_audit  # torch and matplotlib: only here

    classes = predictor.labels
    report, confusion = audit(outcomes, truth, classes)
    facts = {"model": predictor.model.name, "model_version": predictor.version, "truth": str(source)}
    report = {**facts, **report}
    if output is None:
        sys.stdout.write(per_class_table(report, confusion))
        where = " (--output FILE writes the audit and the confusion matrix beside FILE)"
    else:
        json_path, figure_path = beside(output, ".audit.json"), beside(output, ".confusion.png")
        write_audit(report, confusion, classes, json_path, figure_path)
        where = f" -> {json_path}, {figure_path}"
    augmented = report.get("tta")
    if augmented:
        where = f"; tta={augmented['mode']}: {_figures(augmented)}{where}"
    logger.info(
        "predict: truth from %s: %s over %d answered images%s", source, _figures(report), report["count"], where
    )


def _figures(report: dict) -> str:
    return f"top-1 {100 * report['top1']:.2f}%, top-5 {100 * report['top5']:.2f}%, macro F1 {report['macro']['f1']:.3f}"


CONFIG = PredictConfig  # the options and their defaults (`leafnet predict --help` lists them)
