"""Decoding untrusted image files into clean RGB, or a one-line reason why not; fitting them to a square.

Every image that enters leafnet (prepare, serving, offline prediction) goes through `decode_upload`, so
all of them agree on EXIF orientation, alpha compositing, 16-bit and palette handling, and on what counts
as a decompression bomb. Prepare decodes at full size (`decode_image`) and fits with `fit_square`; serving
asks `decode_upload` for the fitted image directly, which it builds without a full-size copy of anything
but the decoded pixels, so an upload costs in proportion to the pixel cap (docs/serving.md, Bounded cost
per request). It is part of leafnet.serving, which every .mar carries: PIL and numpy only.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: any phone photo, far below what would exhaust memory (prepare's cap)
DEFAULT_MIN_SIDE = 16
# fit_square lets PIL box-reduce to 3x the target size before resampling (PIL: "practically
# indistinguishable" from resampling the whole image); JPEG decoding at reduced scale stops at that margin.
REDUCING_GAP = 3.0
_BAND_PIXELS = 1 << 18  # canvas pixels built at once: about 1 MB buffers, whatever the image's size
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class RejectedImage(Exception):  # noqa: N818 (public name: handlers and archives import it)
    """An input that cannot become a training image; the message is the reason for rejected.csv.

    `kind` sorts reasons for counting and HTTP status: empty, not_image, corrupt, too_large, too_small,
    too_slow, unsupported.
    """

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason, kind)  # both in args, so the exception survives pickling between processes
        self.reason, self.kind = reason, kind

    def __str__(self) -> str:
        return self.reason


class Deadline:
    """The time one image may take to prepare, checked between decode stages and bands. A stage itself (PIL's
    decoder, one resize) runs to its end: the pixel cap bounds each, and TorchServe's responseTimeout is the
    hard backstop for a worker that never returns."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.started = seconds, time.perf_counter()

    def check(self, stage: str) -> None:
        """Raises RejectedImage (too_slow) once the limit has passed."""
        if not self.seconds:  # None or 0: no limit
            return
        elapsed = time.perf_counter() - self.started
        if elapsed > self.seconds:
            raise RejectedImage(
                f"too slow: {elapsed:.2f} s spent by {stage}, over prepare_timeout_s={self.seconds:g}; send a "
                "smaller image",
                "too_slow",
            )


def decode_upload(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    background: tuple[int, int, int] = (0, 0, 0),
    fit: tuple[int, str] | None = None,
    max_square: int | None = None,
    deadline: Deadline | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decodes bytes to an RGB image, upright per EXIF, alpha composited over `background`, and returns it
    with the upload's own (upright) size.

    With `fit` (size, mode), the image comes as fit_square(<the full-size image>, size, mode) would make
    it, bit for bit, but built a band at a time (`_fitted`), and a JPEG decodes at the smallest DCT scale
    (1/2, 1/4, 1/8) that keeps what the fit's resize reduces to: the only deviation, within libjpeg's
    scaling. Without, full size. Letterboxing pads to a square of the longer side: `max_square` caps its
    area (None: no cap).

    Raises RejectedImage with a short reason for empty, non-image, truncated, oversized, tiny or too slow
    input.
    """
    if not data:
        raise RejectedImage("empty file", "empty")
    deadline = deadline or Deadline(None)
    image, upload_size = _loaded(data, max_pixels, min_side, fit, max_square)
    deadline.check("decoding")
    decoded_size = image.size
    # Upright per EXIF, on the decoded pixels, before any fitting, as prepare does (in place: no copy of an
    # image without an orientation). A broken EXIF block only loses the hint.
    with contextlib.suppress(OSError, ValueError, SyntaxError):
        ImageOps.exif_transpose(image, in_place=True)
    if image.size != decoded_size:  # a quarter turn: the upload's sides swap too
        upload_size = upload_size[::-1]
    if image.mode == "F":
        raise RejectedImage("unsupported mode F (floating-point pixels have no standard range)", "unsupported")
    if fit is None:
        return _canvas(image, background, image.size, (0, 0), (1, 1), deadline), upload_size
    return _fitted(image, background, fit, deadline), upload_size


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    background: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Decodes bytes to a full-size RGB image, upright per EXIF, alpha composited over `background`, for
    fit_square to letterbox at full size: the square counts against `max_pixels` too.

    Raises RejectedImage with a short reason for empty, non-image, truncated, oversized or tiny input.
    """
    return decode_upload(data, max_pixels, min_side, background, max_square=max_pixels)[0]


def _loaded(
    data: bytes, max_pixels: int, min_side: int, fit: tuple[int, str] | None, max_square: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The image decoded in its own mode, after checking its header's size (Image.open is lazy), and that
    size (a JPEG may decode smaller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            header_size = image.size
            _check_size(header_size, max_pixels, min_side, max_square)
            image.seek(0)  # first frame of GIF/TIFF/WebP animations
            if fit is not None:
                _draft(image, fit)
            image.load()
        except RejectedImage:
            raise
        except UnidentifiedImageError:
            raise RejectedImage("not an image (no known image format)", "not_image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise RejectedImage(f"too large: {error} (max_pixels={max_pixels})", "too_large") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise RejectedImage(f"corrupt or truncated image: {error}", "corrupt") from None
    return image, header_size


def _check_size(size: tuple[int, int], max_pixels: int, min_side: int, max_square: int | None) -> None:
    width, height = size
    if width * height > max_pixels:
        raise RejectedImage(f"too large: {width}x{height} exceeds max_pixels={max_pixels}", "too_large")
    if max_square is not None and max(width, height) ** 2 > max_square:
        raise RejectedImage(
            f"too large: letterboxing {width}x{height} needs {max(width, height) ** 2} pixels, "
            f"over {max_square} (max_pixels={max_pixels})",
            "too_large",
        )
    if min(width, height) < min_side:
        raise RejectedImage(f"too small: {width}x{height} is under min_side={min_side}", "too_small")


def jpeg_draft_scale(size: tuple[int, int], fit: tuple[int, str] | None) -> int:
    """The DCT scale (1, 2, 4 or 8) a JPEG of `size` decodes at under `_draft`: PIL's rule, the largest
    scale whose reduced size still holds what was asked."""
    asked = _draft_size(size, fit)
    if asked is None:
        return 1
    return max(s for s in (1, 2, 4, 8) if size[0] // s >= asked[0] and size[1] // s >= asked[1])


def _draft(image: Image.Image, fit: tuple[int, str]) -> None:
    """Asks JPEG for the smallest DCT scale that keeps what the fit's resize reduces to; other formats
    ignore it."""
    asked = _draft_size(image.size, fit)
    if asked is not None:
        image.draft(None, asked)


def _draft_size(size: tuple[int, int], fit: tuple[int, str] | None) -> tuple[int, int] | None:
    """The size to ask PIL's draft for, None when the fit needs the image whole. PIL picks the largest scale
    s (1, 2, 4, 8) with size // s >= the size asked, so asking for the size over the smaller reducing factor,
    rounded up, keeps s within both factors."""
    if fit is None:
        return None
    canvas, _, target = _fit_geometry(size, *fit)
    factor = min(_reducing_factors(canvas, target))
    if factor <= 1:
        return None
    return -(-size[0] // factor), -(-size[1] // factor)


def _fit_geometry(
    size: tuple[int, int], fit_size: int, mode: str
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """fit_square's steps as sizes: the canvas it resizes (`pad`: the letterbox square), where the image
    sits on it, and the size it resizes the canvas to (`shorter` then centre-crops)."""
    width, height = size
    if mode == "pad":
        side = max(width, height)
        return (side, side), ((side - width) // 2, (side - height) // 2), (fit_size, fit_size)
    if mode == "shorter":
        scale = fit_size / min(width, height)
        return size, (0, 0), (max(fit_size, round(width * scale)), max(fit_size, round(height * scale)))
    if mode == "stretch":
        return size, (0, 0), (fit_size, fit_size)
    raise ValueError(f"unknown resize mode {mode!r}")


def _reducing_factors(canvas: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The whole factors PIL's resize(reducing_gap=REDUCING_GAP) box-reduces `canvas` by on its way to
    `target` (PIL's Image.resize)."""
    return tuple(int(side / goal / REDUCING_GAP) or 1 for side, goal in zip(canvas, target, strict=True))


def _fitted(
    image: Image.Image, background: tuple[int, int, int], fit: tuple[int, str], deadline: Deadline
) -> Image.Image:
    """fit_square of the image converted to RGB, pixel for pixel, without building the full-size RGB
    image or the letterbox square: PIL's resize(reducing_gap) box-reduces the canvas first and resamples
    the reduced one from a fractional box; here the reduced canvas is built band by band (`_canvas`), so
    only the decoded image is ever full size."""
    fit_size, mode = fit
    canvas, offset, target = _fit_geometry(image.size, fit_size, mode)
    factors = _reducing_factors(canvas, target)
    reduced = _canvas(image, background, canvas, offset, factors, deadline)
    box = (0, 0, canvas[0] / factors[0], canvas[1] / factors[1])  # as PIL's resize continues after reducing
    return _centre_crop(reduced.resize(target, Image.Resampling.BICUBIC, box=box), fit_size)


def _canvas(
    image: Image.Image,
    background: tuple[int, int, int],
    canvas: tuple[int, int],
    offset: tuple[int, int],
    factors: tuple[int, int],
    deadline: Deadline,
) -> Image.Image:
    """A `canvas`-sized RGB image filled with `background`, the image converted to RGB at `offset` on it,
    box-reduced by `factors` (Image.reduce), built a band of rows at a time: each band of the canvas is
    converted and reduced before the next. Bands are whole blocks of the reduction and blocks with no
    image pixel are plain background, so the result equals reducing the whole canvas."""
    (factor_x, factor_y), (left, top), (width, height) = factors, offset, image.size
    reduced = Image.new("RGB", (-(-canvas[0] // factor_x), -(-canvas[1] // factor_y)), background)
    x0, x1 = left // factor_x * factor_x, min(canvas[0], -(-(left + width) // factor_x) * factor_x)
    y0, y1 = top // factor_y * factor_y, min(canvas[1], -(-(top + height) // factor_y) * factor_y)
    rows = max(1, _BAND_PIXELS // ((x1 - x0) * factor_y)) * factor_y
    for band_top in range(y0, y1, rows):
        band_bottom = min(y1, band_top + rows)
        band = Image.new("RGB", (x1 - x0, band_bottom - band_top), background)
        first, last = max(0, band_top - top), min(height, band_bottom - top)  # the image's rows in this band
        band.paste(_band_to_rgb(image.crop((0, first, width, last)), background), (left - x0, top + first - band_top))
        if factors != (1, 1):
            band = band.reduce(factors)
        reduced.paste(band, (x0 // factor_x, band_top // factor_y))
        deadline.check("fitting")
    return reduced


def _band_to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Rows of the decoded image as 8-bit RGB: per pixel, so converting band by band equals converting the
    whole image."""
    if image.mode in _SIXTEEN_BIT:
        image = _eight_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey (I;16*, or I holding 16-bit values) to L, each value v to round(v / 257), so 257 * n
    gives n exactly: a lookup in integers, no float copy. PIL's convert("L") would clip at 255 instead."""
    values = np.asarray(image)
    if values.dtype.itemsize > 2:  # mode I: 32-bit signed
        values = np.clip(values, 0, 65535)
    return Image.fromarray(_sixteen_to_eight()[values])


@functools.cache
def _sixteen_to_eight() -> np.ndarray:
    return ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def fit_square(image: Image.Image, size: int, mode: str, background: tuple[int, int, int]) -> Image.Image:
    """Resizes to size x size: `pad` letterboxes (keeps the shape, the key trait of a silhouette),
    `shorter` scales the shorter side to `size` and centre-crops, `stretch` ignores the aspect ratio."""
    canvas, offset, target = _fit_geometry(image.size, size, mode)
    if canvas != image.size:
        square = Image.new("RGB", canvas, background)
        square.paste(image, offset)
        image = square
    return _centre_crop(image.resize(target, Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP), size)


def _centre_crop(image: Image.Image, size: int) -> Image.Image:
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with no metadata, so the same pixels always give the same file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
