"""Run tracking on rank 0: TensorBoard scalars, images and figures, metrics.csv, console lines.

Other ranks get a `Tracker` whose methods do nothing, so callers never branch on the rank.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.font_manager import FontProperties
from PIL import Image
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


FIGURE_DPI = 120


def confusion_figure(confusion: torch.Tensor, class_names: list[str], title: str = "confusion matrix"):
    """Row-normalised confusion matrix (rows: true class) with class names on both axes."""
    matrix = confusion.double()
    matrix = (matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    n = len(class_names)
    side = min(4 + 0.16 * n, 24)  # the matrix's, in inches; the margins come on top
    font = max(3.0, min(9.0, 400 / max(n, 1)))
    figure = plt.figure(dpi=FIGURE_DPI)  # the dpi it is saved at: the margins are measured in its pixels
    # Margins from the widest class name, measured once: tight_layout would lay out every label twice more,
    # a large share of the figure's cost with 99 classes (docs/training.md).
    label = _widest_text(figure, class_names, font) + 30 / 72  # ticks, the axis label and a gap
    right, top = 0.6, 0.45  # the colour bar's labels; the title
    width, height = label + side + right, label + side + top
    figure.set_size_inches(width, height)
    figure.subplots_adjust(left=label / width, bottom=label / height, right=1 - right / width, top=1 - top / height)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes.set_xticks(range(n), class_names, rotation=90, fontsize=font)
    axes.set_yticks(range(n), class_names, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    return figure


def _widest_text(figure, texts: list[str], fontsize: float) -> float:
    """Inches: the widest of `texts` in the default font at `fontsize`, as the figure's renderer draws it."""
    renderer = figure.canvas.get_renderer()
    font = FontProperties(size=fontsize)
    widths = (renderer.get_text_width_height_descent(text, font, ismath=False)[0] for text in texts)
    return max(widths, default=0.0) / figure.dpi


def save_figure(figure, path: str | Path) -> None:
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)


def figure_pixels(figure) -> np.ndarray:
    """The figure drawn once at its own dpi, as RGB pixels (HWC uint8), then closed: a file and TensorBoard
    can share them without drawing it again or decoding a PNG."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return pixels


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()


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
        """A drawn figure (`figure_pixels`): RGB HWC uint8."""
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
