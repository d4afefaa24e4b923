"""Decoding untrusted image files into clean RGB, or a one-line reason why not; and the per-image
statistics that drift monitoring compares between served requests and the training images.

Every image that enters leafnet (prepare, evaluation, serving tests) goes through `decode_image`,
so all of them agree on EXIF orientation, alpha compositing, 16-bit and palette handling, and on
what counts as a decompression bomb. The TorchServe handler runs this very file: export packs it into
every .mar, which is why it imports nothing but PIL and numpy. For the same reason `image_stats` lives
here: the handler (per request) and export (over the training images) compute it with the same code.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: any phone photo, far below what would exhaust memory
DEFAULT_MIN_SIDE = 16


class RejectedImage(Exception):  # noqa: N818 (public name: handlers and archives import it)
    """An input that cannot become a training image; the message is the reason for rejected.csv.

    `kind` sorts reasons for counting and HTTP status: empty, not_image, corrupt, too_large, too_small,
    unsupported.
    """

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason, kind)  # both in args, so the exception survives pickling between processes
        self.reason, self.kind = reason, kind

    def __str__(self) -> str:
        return self.reason


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: PIL's convert("L") clips at 255, so scale the full 16-bit range down instead.
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        raise RejectedImage("unsupported mode F (floating-point pixels have no standard range)", "unsupported")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    background: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Decodes bytes to an RGB image, upright per EXIF, alpha composited over `background`.

    Raises RejectedImage with a short reason for empty, non-image, truncated, oversized or tiny input.
    """
    if not data:
        raise RejectedImage("empty file", "empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise RejectedImage(f"too large: {width}x{height} exceeds max_pixels={max_pixels}", "too_large")
            if max(width, height) ** 2 > max_pixels:  # letterboxing pads to a square of the longest side
                raise RejectedImage(
                    f"too large: letterboxing {width}x{height} needs {max(width, height) ** 2} pixels, "
                    f"over max_pixels={max_pixels}",
                    "too_large",
                )
            image.seek(0)  # first frame of GIF/TIFF/WebP animations
            image.load()
        except RejectedImage:
            raise
        except UnidentifiedImageError:
            raise RejectedImage("not an image (no known image format)", "not_image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise RejectedImage(f"too large: {error}", "too_large") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise RejectedImage(f"corrupt or truncated image: {error}", "corrupt") from None
    with contextlib.suppress(OSError, ValueError, SyntaxError):  # a broken EXIF block only loses the orientation hint
        image = ImageOps.exif_transpose(image)
    if min(image.size) < min_side:
        raise RejectedImage(f"too small: {image.size[0]}x{image.size[1]} is under min_side={min_side}", "too_small")
    return _to_rgb(image, background)


def fit_square(image: Image.Image, size: int, mode: str, background: tuple[int, int, int]) -> Image.Image:
    """Resizes to size x size: `pad` letterboxes (keeps the shape, the key trait of a silhouette),
    `shorter` scales the shorter side to `size` and centre-crops, `stretch` ignores the aspect ratio."""
    width, height = image.size
    if mode == "pad":
        side = max(width, height)
        square = Image.new("RGB", (side, side), background)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        return square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if mode == "shorter":
        scale = size / min(width, height)
        resized = image.resize(
            (max(size, round(width * scale)), max(size, round(height * scale))),
            Image.Resampling.BICUBIC,
            reducing_gap=3.0,
        )
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        return resized.crop((left, top, left + size, top + size))
    if mode == "stretch":
        return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    raise ValueError(f"unknown resize mode {mode!r}")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with no metadata, so the same pixels always give the same file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


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
