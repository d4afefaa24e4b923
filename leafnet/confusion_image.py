"""The confusion matrix as an image, drawn with Pillow straight to RGB pixels.

Row-normalised (rows: the true class), white for none to dark blue for all of a row, every class name on
both axes, a colour bar and a title. A training run waits for this figure at its end, and with 99 classes
matplotlib's per-tick artists took seconds where this takes a fraction of one (docs/training.md). The same
pixels go to the PNG file and to TensorBoard, so the figure is drawn once.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from leafnet.fsutil import atomic_write_bytes

PAPER = (255, 255, 255)
INK = (0, 0, 0)
# A sequential white-to-blue scale (ColorBrewer's "Blues" end points and middle): a zero is paper white, so
# the few off-diagonal mistakes of a good model stand out, where viridis would paint them on dark purple.
_STOPS = np.array([0.0, 0.5, 1.0])
_COLOURS = np.array([(247, 251, 255), (107, 174, 214), (8, 48, 107)], dtype=np.float64)

MATRIX_PX = 1400  # the matrix's side is about this many pixels, within the cell limits below
MIN_CELL, MAX_CELL = 1, 40
MIN_LABEL_CELL = 8  # cells smaller than this get no class names: they would overlap
PAD = 6


def colour(values: np.ndarray) -> np.ndarray:
    """RGB uint8 for values in [0, 1] (any shape; a trailing axis of 3 is added)."""
    values = np.clip(values, 0.0, 1.0)
    channels = [np.interp(values, _STOPS, _COLOURS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


@lru_cache(maxsize=1)
def _font_file() -> str | None:
    """matplotlib's DejaVu Sans, found without importing matplotlib: it covers the accented, Greek and
    Cyrillic letters of class names (and the x of hybrids) that Pillow's own default font draws as boxes."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if candidate.is_file():
            return str(candidate)
    return None


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    path = _font_file()
    font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow was built without FreeType, which the confusion figure's text needs")
    return font


@dataclass(frozen=True)
class Layout:
    """Where everything lies, in pixels: the matrix's top-left corner, its rows (classes, or blocks of
    `group` classes when there are more classes than pixels to give them), one cell's side, the class
    names' margin and font size (0: too many classes to name), and the image's size."""

    left: int
    top: int
    cell: int
    rows: int
    group: int
    label: int
    label_size: int
    width: int
    height: int

    @property
    def side(self) -> int:
        return self.cell * self.rows


TITLE_SIZE, HEADING_SIZE, BAR = 16, 14, 14


def layout(class_names: list[str], title: str) -> Layout:
    n = len(class_names)
    if n == 0:
        raise ValueError("a confusion matrix needs at least one class")
    group = -(-n // MATRIX_PX)  # classes per drawn row: 1 up to MATRIX_PX classes
    rows = -(-n // group)
    cell = int(np.clip(MATRIX_PX // rows, MIN_CELL, MAX_CELL))
    label_size = int(np.clip(cell - 2, 8, 14)) if cell >= MIN_LABEL_CELL else 0
    label = 0
    if label_size:
        label = int(np.ceil(max(_font(label_size).getlength(name) for name in class_names))) + PAD
    heading = _font(HEADING_SIZE)
    axis = _text_height(heading) + PAD  # "true" and "predicted"
    bar = 10 + BAR + 4 + int(np.ceil(heading.getlength("0.75")))  # gap, bar, tick, tick label
    left = PAD + axis + label
    top = PAD + _text_height(_font(TITLE_SIZE)) + PAD
    title_width = int(np.ceil(_font(TITLE_SIZE).getlength(title))) + 2 * PAD
    width = max(left + cell * rows + bar + PAD, title_width)
    height = top + cell * rows + 2 + label + axis + PAD  # 2: the matrix's frame, clear of the names
    return Layout(left, top, cell, rows, group, label, label_size, width, height)


def _block_means(rates: np.ndarray, group: int) -> np.ndarray:
    """The mean rate of each group x group block of cells (the last blocks may be smaller)."""
    if group == 1:
        return rates
    n = rates.shape[0]
    rows = -(-n // group)
    padded = np.full((rows * group, rows * group), np.nan)
    padded[:n, :n] = rates
    return np.nanmean(padded.reshape(rows, group, rows, group), axis=(1, 3))


def confusion_image(confusion: torch.Tensor, class_names: list[str], title: str = "confusion matrix") -> np.ndarray:
    """The row-normalised confusion matrix (a [true, predicted] count matrix) as RGB pixels (HWC uint8)."""
    counts = confusion.double()
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    # One line each: Pillow anchors only single-line text (a folder name may hold a newline).
    title, class_names = _one_line(title), [_one_line(name) for name in class_names]
    box = layout(class_names, title)
    side = box.side
    pixels = np.full((box.height, box.width, 3), PAPER, dtype=np.uint8)
    cells = np.repeat(np.repeat(colour(_block_means(rates, box.group)), box.cell, axis=0), box.cell, axis=1)
    pixels[box.top : box.top + side, box.left : box.left + side] = cells
    bar_left = box.left + side + 10
    pixels[box.top : box.top + side, bar_left : bar_left + BAR] = colour(np.linspace(1.0, 0.0, side))[:, None]
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.rectangle((box.left - 1, box.top - 1, box.left + side, box.top + side), outline=INK)
    draw.rectangle((bar_left - 1, box.top - 1, bar_left + BAR, box.top + side), outline=INK)
    heading = _font(HEADING_SIZE)
    for value in (0.0, 0.25, 0.5, 0.75, 1.0) if side >= 100 else (0.0, 1.0):  # labels a text line apart
        y = box.top + round((1.0 - value) * (side - 1))
        draw.line((bar_left + BAR, y, bar_left + BAR + 3, y), fill=INK)
        draw.text((bar_left + BAR + 4, y), f"{value:g}", fill=INK, font=heading, anchor="lm")
    title_font = _font(TITLE_SIZE)
    half = title_font.getlength(title) / 2
    centre = min(max(box.left + side / 2, PAD + half), box.width - PAD - half)  # a long title stays inside
    draw.text((centre, PAD), title, fill=INK, font=title_font, anchor="mt")
    if box.label_size:
        names = _font(box.label_size)
        for i, name in enumerate(class_names):  # the true classes, right-aligned against the matrix
            draw.text((box.left - PAD, box.top + (i + 0.5) * box.cell), name, fill=INK, font=names, anchor="rm")
        # The predicted classes read upwards under their columns: drawn as rows on a strip, turned a quarter.
        strip = Image.new("RGB", (box.label, side), PAPER)
        strip_draw = ImageDraw.Draw(strip)
        for i, name in enumerate(class_names):
            strip_draw.text((box.label - PAD, (i + 0.5) * box.cell), name, fill=INK, font=names, anchor="rm")
        image.paste(strip.transpose(Image.Transpose.ROTATE_90), (box.left, box.top + side + 2))
    draw.text((box.left + side / 2, box.top + side + 2 + box.label), "predicted", fill=INK, font=heading, anchor="mt")
    true = Image.new("RGB", (int(np.ceil(heading.getlength("true"))) + 2, _text_height(heading)), PAPER)
    ImageDraw.Draw(true).text((1, 0), "true", fill=INK, font=heading, anchor="lt")
    turned = true.transpose(Image.Transpose.ROTATE_90)
    image.paste(turned, (PAD, round(box.top + side / 2 - turned.height / 2)))
    return np.array(image)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    atomic_write_bytes(Path(path), png_bytes(pixels))
