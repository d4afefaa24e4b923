"""The confusion figure's layout and the one-draw path from a figure to a PNG file and TensorBoard."""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from leafnet.tracking import confusion_figure, figure_pixels, png_bytes


@pytest.mark.parametrize(
    "names",
    [
        ["a", "a_name_far_longer_than_the_matrix_is_wide_Profundum", "c", "d", "e"],
        [f"Genus_{i}_Species_Dentatum_Profundum" for i in range(99)],
    ],
)
def test_every_class_name_title_and_colour_bar_label_is_inside_the_figure(names):
    """The margins are measured, not laid out by tight_layout: nothing drawn may fall off the canvas."""
    confusion = torch.eye(len(names), dtype=torch.long) * 3
    confusion[0, 1] = 1
    figure = confusion_figure(confusion, names, "test confusion matrix (15 images)")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    width, height = figure.canvas.get_width_height()
    texts = [label for axes in figure.axes for label in axes.get_xticklabels() + axes.get_yticklabels()]
    texts += [axes.title for axes in figure.axes] + [axes.xaxis.label for axes in figure.axes]
    texts += [axes.yaxis.label for axes in figure.axes]
    drawn = [text for text in texts if text.get_text() and text.get_visible()]
    assert len(drawn) >= 2 * len(names) + 3
    for text in drawn:
        box = text.get_window_extent(renderer)
        inside = box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height
        assert inside, f"{text.get_text()!r} at {box} outside a {width}x{height} figure"
    plt.close(figure)


def test_a_figure_is_drawn_once_for_its_png_and_tensorboard():
    pixels = figure_pixels(confusion_figure(torch.eye(3, dtype=torch.long), ["x", "y", "z"]))
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.min() < 100 < pixels.max()  # something was drawn
    with Image.open(io.BytesIO(png_bytes(pixels))) as decoded:
        assert np.array_equal(np.asarray(decoded.convert("RGB")), pixels)
