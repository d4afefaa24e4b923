"""Evaluate a checkpoint on any split: top-1, top-5, per-class precision/recall/F1, confusion matrix.

Needs nothing but the checkpoint: model name, class names and the eval preprocessing travel in it.
Writes `eval.json` (`eval_<split>.json` unless it is the test split) and `confusion_matrix.png`.
With tta=flip (leafnet.tta) a second pass answers each image with the mean of its and its mirror's
probabilities; its metrics go beside the plain ones (eval.json's "tta" block), which stay those of the one
pass the server makes, so runs with and without TTA compare. The confusion matrix is the plain pass's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from leafnet.checkpoint import load_checkpoint
from leafnet.confusion_image import confusion_image, write_png
from leafnet.data.dataset import ManifestDataset
from leafnet.data.loaders import LoaderConfig, build_loader
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.distributed import DistInfo, select_device
from leafnet.engine import evaluate
from leafnet.errors import LeafnetError
from leafnet.fsutil import write_json
from leafnet.models import model_from_checkpoint
from leafnet.tta import checked_mode, mean_of_probabilities, mirrored

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    checkpoint: str = "runs/leafnet/checkpoints/best.pt"  # the leafnet checkpoint to evaluate
    split: str = "test"  # train | val | test
    data: str | None = None  # default: the data root the checkpoint was trained on
    output: str | None = None  # default: the run directory of the checkpoint
    batch_size: int = 128  # images per forward pass
    workers: int = 2  # DataLoader worker processes
    device: str = "auto"  # auto | cpu | cuda
    # test-time augmentation, reported beside the plain metrics: none, or flip (the mean of the image's and
    # its mirror's softmax probabilities; a second pass)
    tta: str = "none"


class FlipAveraged(torch.nn.Module):
    """A classifier answering with the mean of its probabilities over each image and its mirror, as logits
    (log-probabilities: leafnet.tta)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return mean_of_probabilities(self.model(images), self.model(mirrored(images)))


def per_class_metrics(confusion: torch.Tensor, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class from a [true, predicted] count matrix."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    predicted = confusion.sum(dim=0)
    actual = confusion.sum(dim=1)
    precision = true_positive / predicted.clamp(min=1)
    recall = true_positive / actual.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {
        name: {
            "precision": round(precision[i].item(), 4),
            "recall": round(recall[i].item(), 4),
            "f1": round(f1[i].item(), 4),
            "support": int(actual[i].item()),
        }
        for i, name in enumerate(class_names)
    }


def macro_average(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """Precision, recall and F1 averaged over the classes, each class counting once."""
    return {
        key: round(sum(c[key] for c in per_class.values()) / len(per_class), 4) for key in ("precision", "recall", "f1")
    }


def evaluate_checkpoint(config: EvalConfig, log=logger.info) -> dict:
    checked_mode(config.tta)
    checkpoint = load_checkpoint(config.checkpoint)
    classes = checkpoint["class_names"]
    data = config.data or checkpoint["config"]["data"]["root"]
    dataset = ManifestDataset(data, config.split, eval_transform(PreprocessSpec.from_dict(checkpoint["preprocess"])))
    if dataset.classes != classes:
        raise LeafnetError(f"{data} has other classes than the checkpoint ({len(dataset.classes)} vs {len(classes)})")
    if len(dataset) == 0:
        raise LeafnetError(f"split {config.split!r} of {data} is empty")
    device = select_device(config.device, DistInfo())
    model = model_from_checkpoint(checkpoint).to(device)
    loader = build_loader(
        dataset, LoaderConfig(batch_size=config.batch_size, workers=config.workers), train=False, device=device
    )
    result = evaluate(model, loader, device, len(classes))
    facts = {"checkpoint": str(config.checkpoint), "epoch": checkpoint["epoch"], "data": str(data)}
    report = {**facts, "split": config.split, **_metrics(result, classes)}
    summary = _summary(result, report)
    if config.tta != "none":
        augmented = evaluate(FlipAveraged(model), loader, device, len(classes))
        report["tta"] = {"mode": config.tta, **_metrics(augmented, classes)}
        summary += f"; tta={config.tta}: {_summary(augmented, report['tta'])}"
    out_dir = Path(config.output) if config.output else Path(config.checkpoint).resolve().parent.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if config.split == "test" else f"_{config.split}"
    write_json(out_dir / f"eval{suffix}.json", report)
    title = f"{config.split} confusion matrix ({result.count} images)"
    write_png(out_dir / f"confusion_matrix{suffix}.png", confusion_image(result.confusion, classes, title))
    log(f"{config.split}: {summary}  ({result.count} images) -> {out_dir / f'eval{suffix}.json'}")
    return report


def _metrics(result, classes: list[str]) -> dict:
    """eval.json's metrics of one evaluation pass (engine.EvalResult)."""
    per_class = per_class_metrics(result.confusion, classes)
    return {
        "count": result.count,
        "top1": round(result.top1, 4),
        "top5": round(result.top5, 4),
        "loss": round(result.loss, 4),
        "macro": macro_average(per_class),
        "per_class": per_class,
    }


def _summary(result, metrics: dict) -> str:
    return f"top-1 {result.top1:.2%}  top-5 {result.top5:.2%}  macro F1 {metrics['macro']['f1']:.3f}"
