"""The confusion figure: every name drawn whole inside the image, each cell's colour its row's rate, and the
pixels written to PNG unchanged."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from leafnet.confusion_image import PAD, PAPER, _font, colour, confusion_image, layout, png_bytes

LONG = "a_name_far_longer_than_the_matrix_is_wide_Profundum"


def _ink(pixels: np.ndarray) -> np.ndarray:
    return (pixels != np.array(PAPER, dtype=np.uint8)).any(axis=2)


def _ink_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    rows, columns = np.nonzero(ink)
    return rows.min(), rows.max(), columns.min(), columns.max()


@pytest.mark.parametrize(
    "names",
    [["a", LONG, "c", "d", "e"], [f"Genus_{i}_Species_Dentatum_Profundum" for i in range(99)]],
)
def test_every_class_name_is_drawn_whole_beside_and_under_the_matrix(names):
    title = "test confusion matrix (15 images)"
    pixels = confusion_image(torch.eye(len(names), dtype=torch.long) * 3, names, title)
    box = layout(names, title)
    assert pixels.shape == (box.height, box.width, 3) and pixels.dtype == np.uint8
    ink = _ink(pixels)
    top, bottom, left, right = _ink_box(ink)
    assert top > 0 and left > 0 and bottom < box.height - 1 and right < box.width - 1, "something touches an edge"
    side, longest = box.side, box.label - PAD
    # The true classes' names end PAD before the matrix; the longest reaches back its own width (its row is
    # clear of the axis label "true", which is centred on the matrix).
    first = max(range(len(names)), key=lambda i: len(names[i]))
    row = ink[box.top + first * box.cell : box.top + (first + 1) * box.cell, : box.left - 1]
    columns = np.nonzero(row.any(axis=0))[0]
    assert box.left - PAD - columns.min() == pytest.approx(longest, abs=3)
    assert columns.max() <= box.left - PAD
    # The predicted classes' names read upwards from just under the matrix, as long as the longest.
    below = ink[box.top + side + 2 : box.top + side + 2 + box.label, box.left : box.left + side]
    rows = np.nonzero(below.any(axis=1))[0]
    assert rows.max() - PAD + 1 == pytest.approx(longest, abs=3)
    inked = below.any(axis=0)
    runs = int(inked[0]) + int(np.count_nonzero(inked[1:] & ~inked[:-1]))
    assert runs == len(names), f"{runs} separate names under {len(names)} columns"


def test_each_cell_is_coloured_by_its_share_of_the_true_class():
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [0, 2, 2]])
    names = ["x", "y", "z"]
    pixels = confusion_image(confusion, names)
    box = layout(names, "confusion matrix")
    rates = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.5]]  # an empty row stays empty, not NaN
    for i in range(3):
        for j in range(3):
            centre = pixels[box.top + i * box.cell + box.cell // 2, box.left + j * box.cell + box.cell // 2]
            assert tuple(centre) == tuple(colour(np.array(rates[i][j])))


def test_too_many_classes_to_name_still_draw_the_matrix():
    names = [f"class_{i}" for i in range(500)]
    pixels = confusion_image(torch.eye(500, dtype=torch.long), names)
    box = layout(names, "confusion matrix")
    assert box.label_size == 0 and box.label == 0 and box.group == 1 and box.side <= 1400
    corner = pixels[box.top + box.side - 1, box.left + box.side - 1]  # the last class's own cell: all of its row
    assert tuple(corner) == tuple(colour(np.array(1.0)))


def test_more_classes_than_pixels_are_drawn_as_blocks_of_their_mean_rate():
    names = [f"class_{i}" for i in range(3000)]
    pixels = confusion_image(torch.eye(3000, dtype=torch.long), names)
    box = layout(names, "confusion matrix")
    assert box.group == 3 and box.rows == 1000 and max(pixels.shape) < 1600
    corner = pixels[box.top + box.side - 1, box.left + box.side - 1]  # 3 of the block's 9 cells are 1
    assert tuple(corner) == tuple(colour(np.array(1 / 3)))


def test_one_class_and_names_beyond_ascii():
    names = ["Acer \u00d7 freemanii", "\u00c4rger_\u00df\u00e9\u00f1\u00f8\u0105\u0141", "\u0416\u03bb"]
    pixels = confusion_image(torch.tensor([[2]]), names[:1], "one class\nand a newline")
    assert _ink(pixels).any()
    font = _font(12)
    missing = font.getmask("\U0010fffd").getbbox(), bytes(font.getmask("\U0010fffd"))
    for char in "".join(names[1:]) + "\u00d7":
        assert (font.getmask(char).getbbox(), bytes(font.getmask(char))) != missing, f"{char!r} has no glyph"


def test_a_title_wider_than_the_matrix_stays_inside_the_image():
    title = "validation confusion matrix (last epoch) of a run with a long name " * 2
    pixels = confusion_image(torch.eye(2, dtype=torch.long), ["a", "b"], title)
    _, _, left, right = _ink_box(_ink(pixels))
    assert left > 0 and right < pixels.shape[1] - 1


def test_the_png_holds_the_pixels_unchanged():
    pixels = confusion_image(torch.eye(3, dtype=torch.long), ["x", "y", "z"])
    with Image.open(io.BytesIO(png_bytes(pixels))) as decoded:
        assert np.array_equal(np.asarray(decoded.convert("RGB")), pixels)
