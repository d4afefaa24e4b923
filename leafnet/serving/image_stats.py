"""Per-image statistics that drift monitoring compares between served requests and the training images.

The handler computes them per request and export over the training images, with this same code (every
.mar carries it), so a shift in the statistics is a shift in the inputs, never in their definitions.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageFilter

# Drift statistics. Bump STATS_VERSION whenever a definition changes: a report refuses to compare
# records and a reference computed under different definitions.
STATS_VERSION = 1
DRIFT_LOG_PREFIX = "LEAFNET_DRIFT"  # the handler's log lines: prefix, space, one JSON object
STATS_FEATURES = ("pixels", "brightness", "contrast", "foreground", "edges", "colour", "aspect")
_STATS_SIDE = 64  # statistics are taken at most this many pixels across: a fixed, small cost per request
_LEVELS = np.arange(256, dtype=np.float64)
# Thresholds on a 0-255 scale; thresholded fractions ignore the last-bit noise of JPEG or resampling.
_FOREGROUND = 64  # some channel this far from the background colour
_CHROMA = 32  # max - min channel: visibly coloured, not grey
_EDGE = 64  # response of PIL's 3x3 FIND_EDGES (8 x centre - neighbours)


def _over(histogram: list[int], threshold: int) -> float:
    return sum(histogram[threshold + 1 :]) / sum(histogram)


def _channel_max(image: Image.Image) -> Image.Image:
    red, green, blue = image.split()
    return ImageChops.lighter(ImageChops.lighter(red, green), blue)


def image_stats(image: Image.Image, upload_size: tuple[int, int], background=(0, 0, 0)) -> dict[str, float]:
    """The drift statistics of one image, each a float (STATS_FEATURES):

    - pixels: log10 of the uploaded image's width x height;
    - brightness, contrast: mean and standard deviation of the luminance, 0..1;
    - foreground: fraction of pixels away from the background colour (the leaf, in a silhouette);
    - edges: fraction of pixels on an edge (outlines; rises with noise and texture);
    - colour: fraction of visibly coloured pixels (0 for silhouettes, high for photographs);
    - aspect: log2 of the foreground's horizontal over vertical spread (< 0 for upright leaves).

    `image` is what the model's transform starts from: the decoded upload after prepare's `fit`, so for a
    training image it is the very file prepare wrote. PIL's C routines and numpy on at most 64 x 64 pixels:
    about 0.13 ms for a 128 px image on a 2-core VM.
    """
    factor = math.ceil(max(image.size) / _STATS_SIDE)
    small = image.reduce(factor) if factor > 1 else image
    red, green, blue = small.split()
    highest = _channel_max(small)
    lowest = ImageChops.darker(ImageChops.darker(red, green), blue)
    colour = _over(ImageChops.subtract(highest, lowest).histogram(), _CHROMA)
    if tuple(background) == (0, 0, 0):
        away = highest  # distance from black: the brightest channel
    else:
        away = _channel_max(ImageChops.difference(small, Image.new("RGB", small.size, tuple(background))))
    mask = np.asarray(away) > _FOREGROUND
    grey = small.convert("L")
    histogram = np.asarray(grey.histogram(), dtype=np.float64) / (small.width * small.height)
    mean = float(histogram @ _LEVELS)
    variance = max(float(histogram @ _LEVELS**2) - mean**2, 0.0)
    return {
        "pixels": math.log10(max(upload_size[0] * upload_size[1], 1)),
        "brightness": mean / 255,
        "contrast": math.sqrt(variance) / 255,
        "foreground": float(mask.mean()),
        "edges": _over(_edge_response(grey).histogram(), _EDGE),
        "colour": colour,
        "aspect": _aspect(mask.sum(axis=0), mask.sum(axis=1)),
    }


def _edge_response(grey: Image.Image) -> Image.Image:
    """FIND_EDGES without the outermost pixels, which PIL's 3x3 filters copy from the input unfiltered."""
    edges = grey.filter(ImageFilter.FIND_EDGES)
    return edges.crop((1, 1, edges.width - 1, edges.height - 1)) if min(edges.size) > 2 else edges


def _aspect(columns: np.ndarray, rows: np.ndarray) -> float:
    """log2(horizontal / vertical standard deviation) of the mass the projections describe, in [-4, 4]."""
    if columns.sum() == 0:
        return 0.0

    def variance(weights: np.ndarray) -> float:
        position = np.arange(weights.size)
        centre = weights @ position / weights.sum()
        return float(weights @ (position - centre) ** 2 / weights.sum())

    # A quarter pixel squared keeps a one-pixel line finite; a line across the image saturates at +-4.
    ratio = (variance(columns) + 0.25) / (variance(rows) + 0.25)
    return float(np.clip(0.5 * math.log2(ratio), -4.0, 4.0))
