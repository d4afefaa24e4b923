"""Decoding untrusted image files into clean RGB, or a one-line reason why not; fitting them to a square.

Every image that enters leafnet (prepare, serving, offline prediction) goes through `decode_image`, so
all of them agree on EXIF orientation, alpha compositing, 16-bit and palette handling, and on what counts
as a decompression bomb. It is part of leafnet.serving, which every .mar carries: PIL and numpy only.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
