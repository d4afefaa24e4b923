"""How the answers of `leafnet predict` compare with the truth: top-1, top-5, per-class precision, recall
and F1 and the confusion matrix, with evaluation's own metrics (leafnet.evaluation) and figure
(leafnet.tracking), so an audit of served answers reads like `leafnet evaluate`'s eval.json.

Refused images have no answer and are counted apart; the metrics are over the answered ones. With test-time
augmentation, as in eval.json, the figures are the single-pass answers' (the server's) and a "tta" block
beside them holds the augmented answers' (those the output file holds); the confusion matrix is the
single pass's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from leafnet.confusion_image import confusion_image, write_png
from leafnet.evaluation import macro_average, per_class_metrics
from leafnet.fsutil import write_json
from leafnet.predict import Outcome
from leafnet.predict_output import tta_mode

TOP5 = 5


def audit(outcomes: list[Outcome], truth: list[str], classes: list[str]) -> tuple[dict, torch.Tensor]:
    """(the report, the [true, predicted] count matrix) of the answered outcomes: the single-pass answers',
    and with test-time augmentation a "tta" block of the augmented answers'."""
    report, confusion = _figures([o.plain or o.answer for o in outcomes], truth, classes)
    report = {"count": report["count"], "refused": len(outcomes) - report["count"], **report}
    mode = tta_mode(outcomes)
    if mode:
        report["tta"] = {"mode": mode, **_figures([o.answer for o in outcomes], truth, classes)[0]}
    return report, confusion


def _figures(answers: list[dict | None], truth: list[str], classes: list[str]) -> tuple[dict, torch.Tensor]:
    """The metrics of the answers (None: refused) and their [true, predicted] count matrix."""
    index = {name: i for i, name in enumerate(classes)}
    pairs = [(a["predictions"], index[label]) for a, label in zip(answers, truth, strict=True) if a is not None]
    count = len(pairs)
    top1 = sum(predictions[0]["index"] == true for predictions, true in pairs)
    top5 = sum(true in [p["index"] for p in predictions[:TOP5]] for predictions, true in pairs)
    true = torch.tensor([t for _, t in pairs], dtype=torch.int64)
    predicted = torch.tensor([predictions[0]["index"] for predictions, _ in pairs], dtype=torch.int64)
    n = len(classes)
    confusion = torch.bincount(true * n + predicted, minlength=n * n).view(n, n)  # as engine.evaluate counts
    per_class = per_class_metrics(confusion, classes)
    # A few images need not hold every class: the macro average is over the classes they hold or were
    # answered with (as sklearn's), not diluted by zeros of absent ones. Over a whole split it is evaluate's.
    present = [name for i, name in enumerate(classes) if confusion[i].sum() + confusion[:, i].sum() > 0]
    report = {
        "count": count,
        "top1": round(top1 / max(count, 1), 4),
        "top5": round(top5 / max(count, 1), 4),
        "macro": macro_average({name: per_class[name] for name in present}),
        "macro_classes": len(present),
        "per_class": per_class,
    }
    return report, confusion


def write_audit(report: dict, confusion: torch.Tensor, classes: list[str], json_path: Path, figure_path: Path) -> None:
    write_json(json_path, report)
    title = f"confusion matrix ({report['count']} images)"
    write_png(figure_path, confusion_image(confusion, classes, title))


def per_class_table(report: dict, confusion: torch.Tensor) -> str:
    """Per-class precision, recall, F1 and support as text, for a run without --output: the classes the
    images hold or were answered with."""
    per_class = {
        name: c for i, (name, c) in enumerate(report["per_class"].items()) if confusion[i].sum() + confusion[:, i].sum()
    }
    width = max(len("class"), *(len(name) for name in per_class))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    lines += [
        f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:5.4f}  {c['support']:7d}"
        for name, c in per_class.items()
    ]
    return "\n".join(lines) + "\n"
