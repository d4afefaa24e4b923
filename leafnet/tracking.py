"""Run tracking on rank 0: TensorBoard scalars, images and figures, metrics.csv, console lines.

Other ranks get a `Tracker` whose methods do nothing, so callers never branch on the rank.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "images_per_s",
    "data_wait_fraction",
    "epoch_seconds",
    "wall_s",  # seconds since the run's clock started (the process's start, for `leafnet train`), after validation
)


def denormalised_grid(images: torch.Tensor, mean: list[float], std: list[float], nrow: int = 8) -> torch.Tensor:
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return make_grid((images.float().cpu() * std_t + mean_t).clamp(0, 1), nrow=nrow)


class Tracker:
    """Writes `metrics.csv` and TensorBoard events under the run directory (rank 0 only)."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = True, append: bool = False) -> None:
        self.active = run_dir is not None
        self.writer = None
        if not self.active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.csv"
        if not (append and self.metrics_path.is_file()):
            with open(self.metrics_path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(METRIC_COLUMNS)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log_epoch(self, row: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.metrics_path, "a", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow([_fmt(row.get(column, "")) for column in METRIC_COLUMNS])
        if self.writer:
            epoch = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and value != "":
                    group = "train" if key.startswith("train_") else "val" if key.startswith("val_") else "perf"
                    name = key.removeprefix("train_").removeprefix("val_")
                    self.writer.add_scalar("lr" if key == "lr" else f"{group}/{name}", value, epoch)
            self.writer.flush()

    def log_images(self, tag: str, grid: torch.Tensor, step: int = 0) -> None:
        if self.writer:
            self.writer.add_image(tag, grid, step)

    def log_pixels(self, tag: str, pixels: np.ndarray, step: int = 0) -> None:
        """A drawn figure (leafnet.confusion_image): RGB HWC uint8."""
        if self.writer:
            self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        if self.writer:
            self.writer.add_hparams(hparams, metrics, run_name="hparams")

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
