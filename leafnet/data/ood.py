"""Out-of-distribution images: pictures the classifier should call "unknown" rather than a leaf species.

`generate_ood(per_family, seed, leaves)` synthesises an evaluation set of non-leaf (or untrustworthy leaf)
pictures in families: geometric shapes, glyphs, blobs, textures, noise, landscape scenes, and three families
derived from leaf images the caller passes (heavy crops, inverted, extremely blurred). Everything is generated
here, never downloaded, and every image is a pure function of the seed, the family, its index and (for the
leaf families) the given leaves. Each image gets a generator of its own, seeded by (seed, family, index), so
asking for fewer images or fewer families leaves the others unchanged.

The model will later meet OOD pictures nobody here chose, so each family varies everything it can: canvas
size (64..640 px a side, aspect 0.6..1.6), colours, position, scale and rotation. Each family also renders
part of its images the way the leaf scans look (white or grey on black, one channel), because that is where
a classifier trained on silhouettes is most tempted to answer with confidence.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import operator
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from leafnet.data.prepared import PreparedData
from leafnet.errors import LeafnetError

OOD_FAMILIES: tuple[str, ...] = (
    "geometric",
    "glyphs",
    "blobs",
    "textures",
    "noise",
    "scenes",
    "leaf_crops",
    "leaf_inverted",
    "leaf_blurred",
)
LEAF_FAMILIES: tuple[str, ...] = ("leaf_crops", "leaf_inverted", "leaf_blurred")  # derived from the caller's leaves

MIN_SIDE, MAX_SIDE = 64, 640
MIN_ASPECT, MAX_ASPECT = 0.6, 1.6  # width / height


@dataclass(frozen=True)
class OodImage:
    family: str
    name: str  # unique within a set and file-name safe: "<family>-<index:04d>-<variant>"
    image: Image.Image  # mode "RGB" or "L"


Rng = np.random.Generator
Colour = int | tuple[int, int, int]  # an "L" grey level or an "RGB" triple, matching the canvas mode


# ---------------------------------------------------------------------------------------------- helpers


def _canvas_size(rng: Rng) -> tuple[int, int]:
    """A random (width, height) with both sides in range and the aspect exactly in range: the longer side is
    drawn only from what still leaves the shorter one at least MIN_SIDE."""
    aspect = math.exp(rng.uniform(math.log(MIN_ASPECT), math.log(MAX_ASPECT)))
    stretch = max(aspect, 1.0 / aspect)
    longer = rng.uniform(MIN_SIDE * stretch, MAX_SIDE)
    shorter = max(MIN_SIDE, round(longer / stretch))
    longer = round(longer)
    return (longer, shorter) if aspect >= 1.0 else (shorter, longer)


def _fit_size(width: int, height: int, rng: Rng) -> tuple[int, int]:
    """A random size in range with the aspect of (width, height), as far as the range allows."""
    aspect = float(np.clip(width / max(height, 1), MIN_SIDE / MAX_SIDE, MAX_SIDE / MIN_SIDE))
    stretch = max(aspect, 1.0 / aspect)
    longer = rng.uniform(min(MIN_SIDE * stretch, MAX_SIDE), MAX_SIDE)
    shorter = int(np.clip(round(longer / stretch), MIN_SIDE, MAX_SIDE))
    longer = round(longer)
    return (longer, shorter) if aspect >= 1.0 else (shorter, longer)


def _hsv(rng: Rng, sat: tuple[float, float] = (0.25, 1.0), val: tuple[float, float] = (0.25, 1.0)) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b])


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (round(255 * float(c)) for c in np.clip(colour, 0.0, 1.0))
    return (r, g, b)


def _luma(colour: np.ndarray) -> float:
    return float(np.dot(colour, [0.299, 0.587, 0.114]))


def _contrasting(rng: Rng, background: np.ndarray) -> np.ndarray:
    """A random colour clearly lighter or darker than the background, so the foreground is never invisible."""
    dark_bg = _luma(background) < 0.5
    for _ in range(8):
        colour = _hsv(rng, val=(0.7, 1.0) if dark_bg else (0.0, 0.45))
        if abs(_luma(colour) - _luma(background)) > 0.3:
            return colour
    return np.ones(3) if dark_bg else np.zeros(3)


def _scan_colours(rng: Rng) -> tuple[int, int]:
    """(background, foreground) grey levels of a leaf-scan-like rendering: near black, light grey to white."""
    if rng.random() < 0.5:
        return 0, 255  # exactly the leaf scans' two levels
    return int(rng.integers(0, 30)), int(rng.integers(150, 256))


def _value_noise(rng: Rng, size: tuple[int, int], cells: float) -> np.ndarray:
    """Smooth noise in about [0, 1]: a coarse random grid upsampled with PIL's bicubic filter (fast, no loops)."""
    width, height = size
    scale = cells / max(width, height)
    grid_w, grid_h = max(2, math.ceil(width * scale) + 1), max(2, math.ceil(height * scale) + 1)
    grid = rng.random((grid_h, grid_w), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def _fractal_noise(rng: Rng, size: tuple[int, int], cells: float, octaves: int, persistence: float = 0.5) -> np.ndarray:
    """Multi-octave value noise normalised to [0, 1]."""
    total = np.zeros((size[1], size[0]), dtype=np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        octave_cells = cells * 2**octave
        if octave_cells > max(size) / 2:
            break  # finer octaves than two pixels a cell only add aliasing
        total += amplitude * _value_noise(rng, size, octave_cells)
        amplitude *= persistence
    return _normalise(total)


def _normalise(field: np.ndarray) -> np.ndarray:
    low, high = float(field.min()), float(field.max())
    return ((field - low) / (high - low)).astype(np.float32) if high > low else np.zeros_like(field, np.float32)


def _noise_1d(rng: Rng, length: int, cells: int, octaves: int) -> np.ndarray:
    """A fractal profile in [0, 1] along one axis (ridge lines of hills)."""
    x = np.linspace(0.0, 1.0, length)
    total = np.zeros(length)
    for octave in range(octaves):
        n = cells * 2**octave + 1
        total += 0.5**octave * np.interp(x, np.linspace(0.0, 1.0, n), rng.random(n))
    return _normalise(total)


def _ramp(field: np.ndarray, colours: Sequence[np.ndarray]) -> np.ndarray:
    """Maps a [0, 1] field to colours interpolated along a palette: (H, W) -> (H, W, 3) in [0, 1]."""
    # A 1024-entry lookup table: interpolating every pixel three times costs several times more, for no
    # difference visible after rounding to 8 bits.
    levels = np.linspace(0.0, 1.0, 1024)
    stops, table = np.linspace(0.0, 1.0, len(colours)), np.stack(colours)
    lut = np.stack([np.interp(levels, stops, table[:, c]) for c in range(3)], axis=-1).astype(np.float32)
    return lut[np.clip(np.rint(field * 1023), 0, 1023).astype(np.intp)]


def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    width, height = size
    return np.mgrid[0:height, 0:width].astype(np.float32)


def _to_image(pixels: np.ndarray) -> Image.Image:
    """A float array in [0, 1], (H, W) or (H, W, 3), as an "L" or "RGB" image."""
    data = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(data)  # uint8 (H, W) is "L", (H, W, 3) is "RGB"


def _as_rgb_or_l(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in ("1", "LA", "I", "I;16", "F"):
        return image.convert("L")
    return image.convert("RGB")


def _transform(
    points: np.ndarray, scale: tuple[float, float], degrees: float, centre: tuple[float, float]
) -> list[tuple[float, float]]:
    """Scales unit-shape vertices, rotates them and moves them to the centre, as PIL's list of tuples."""
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    placed = (points * np.asarray(scale)) @ rotation.T + np.asarray(centre)
    return [tuple(xy) for xy in placed.tolist()]


def _circle(n: int = 96) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


# --------------------------------------------------------------------------------------------- geometric

_SHAPES = ("ellipse", "polygon", "star", "rectangle", "ring", "cross", "line")


def _shape_points(kind: str, rng: Rng) -> np.ndarray:
    if kind == "polygon":
        sides = int(rng.integers(3, 9))
        t = np.linspace(0.0, 2 * np.pi, sides, endpoint=False) + rng.uniform(0, 2 * np.pi)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if kind == "star":
        points = int(rng.integers(4, 10))
        t = np.linspace(0.0, 2 * np.pi, 2 * points, endpoint=False)
        radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.25, 0.7))
        return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    if kind == "rectangle":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if kind == "cross":
        a = rng.uniform(0.15, 0.45)  # half the arm thickness
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]]
        )
    return _circle()  # ellipse, and the outer edge of a ring


def _geometric(rng: Rng, size: tuple[int, int]) -> tuple[str, Image.Image]:
    scan_like = rng.random() < 0.5
    if scan_like:
        background, foreground = _scan_colours(rng)
        image = Image.new("L", size, background)

        def fill() -> Colour:
            return foreground if rng.random() < 0.7 else int(rng.integers(120, 256))

        def clear() -> Colour:
            return background
    else:
        bg = np.ones(3) if rng.random() < 0.3 else _hsv(rng)
        image = Image.new("RGB", size, _rgb(bg))

        def fill() -> Colour:
            return _rgb(_contrasting(rng, bg))

        def clear() -> Colour:
            return _rgb(bg)

    draw = ImageDraw.Draw(image)
    width, height = size
    short = min(size)
    kinds = [str(rng.choice(_SHAPES)) for _ in range(int(rng.integers(1, 5)))]
    for kind in kinds:
        centre = (rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height)
        radius = rng.uniform(0.08, 0.4) * short
        scale = (radius, radius * rng.uniform(0.4, 1.0) if kind in ("ellipse", "rectangle", "ring") else radius)
        angle = rng.uniform(0, 360)
        stroke = max(1, round(rng.uniform(0.01, 0.06) * short))
        colour = fill()
        if kind == "line":
            draw.line(_transform(np.array([[-1.0, 0.0], [1.0, 0.0]]), scale, angle, centre), fill=colour, width=stroke)
            continue
        outline = _transform(_shape_points(kind, rng), scale, angle, centre)
        if rng.random() < 0.65:
            draw.polygon(outline, fill=colour)
            if kind == "ring":
                inner = rng.uniform(0.35, 0.8)
                draw.polygon(_transform(_circle(), (scale[0] * inner, scale[1] * inner), angle, centre), fill=clear())
        else:
            draw.polygon(outline, outline=colour, width=stroke)
    if rng.random() < 0.15:  # soft edges, as a defocused photo of the same drawing would have
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 0.02 * short + 0.5)))
    return kinds[0], image


# ------------------------------------------------------------------------------------------------ glyphs

_WORD_LIST = (  # everyday words for lines of text; none is a leaf's name, so no text hints at a species
    "the quick brown fox jumps over lazy dog unknown sample image error none data label class test value north "
    "south east west hello world zero one two three alpha beta gamma delta omega lorem ipsum dolor sit amet stop "
    "exit open close page index total figure table"
)
_WORDS = tuple(_WORD_LIST.split())
_CHARS = string.ascii_letters + string.digits + string.punctuation + "©°±«»"  # what Pillow's default font draws


@functools.lru_cache(maxsize=128)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_mask(text: str, size: int) -> Image.Image:
    """The text as a tight "L" mask, at about `size` px a line, whether or not Pillow has FreeType."""
    font = _font(max(6, size))
    native = not isinstance(font, ImageFont.FreeTypeFont)  # the bitmap fallback has one size: scale it after
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font, spacing=max(1, size // 5))
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).multiline_text((-left, -top), text, fill=255, font=font, spacing=max(1, size // 5))
    if native:
        factor = size / 11.0
        mask = mask.resize((max(1, round(mask.width * factor)), max(1, round(mask.height * factor))))
    return mask


def _random_word(rng: Rng) -> str:
    if rng.random() < 0.5:
        return str(rng.choice(_WORDS))
    return "".join(rng.choice(list(_CHARS), size=int(rng.integers(1, 9))))


def _glyphs(rng: Rng, size: tuple[int, int]) -> tuple[str, Image.Image]:
    width, height = size
    short = min(size)
    style = str(rng.choice(["scan", "ink", "colour"], p=[0.4, 0.3, 0.3]))
    if style == "scan":
        background, foreground = _scan_colours(rng)
        image = Image.new("L", size, background)

        def ink() -> Colour:
            return foreground
    elif style == "ink" and rng.random() < 0.5:  # a grey-scale scan of a printed page
        paper_level, ink_level = int(rng.integers(190, 256)), int(rng.integers(0, 90))
        image = Image.new("L", size, paper_level)

        def ink() -> Colour:
            return ink_level
    elif style == "ink":
        paper = np.full(3, rng.uniform(0.8, 1.0)) if rng.random() < 0.6 else _hsv(rng, sat=(0, 0.2), val=(0.8, 1))
        image = Image.new("RGB", size, _rgb(paper))

        def ink() -> Colour:
            return _rgb(_hsv(rng, sat=(0, 0.8), val=(0, 0.35)))
    else:
        bg = _hsv(rng)
        image = Image.new("RGB", size, _rgb(bg))

        def ink() -> Colour:
            return _rgb(_contrasting(rng, bg))

    variant = str(rng.choice(["huge", "word", "lines", "scatter"]))
    pieces: list[tuple[str, int, float]] = []  # (text, px a line, rotation)
    if variant == "huge":
        pieces.append((str(rng.choice(list(_CHARS))), round(rng.uniform(0.5, 1.1) * short), rng.uniform(-40, 40)))
    elif variant == "word":
        text = " ".join(_random_word(rng) for _ in range(int(rng.integers(1, 3))))
        px = round(rng.uniform(0.8, 1.6) * width / max(1, len(text)))
        pieces.append((text, int(np.clip(px, 10, 0.8 * short)), rng.uniform(-30, 30) if rng.random() < 0.6 else 90))
    elif variant == "lines":
        px = int(rng.integers(8, max(9, short // 5)))
        per_line = max(1, int(width / (0.5 * px)))
        lines = []
        for _ in range(max(1, int(height / (1.3 * px)))):
            words, length = [], 0
            while length < per_line:
                words.append(_random_word(rng))
                length += len(words[-1]) + 1
            lines.append(" ".join(words))
        pieces.append(("\n".join(lines), px, rng.uniform(-8, 8) if rng.random() < 0.7 else 90))
    else:
        for _ in range(int(rng.integers(3, 16))):
            text = str(rng.choice(list(_CHARS))) if rng.random() < 0.6 else _random_word(rng)
            pieces.append((text, int(rng.integers(10, max(11, short // 2))), rng.uniform(-180, 180)))
    for text, px, angle in pieces:
        mask = _text_mask(text, px).rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        if variant in ("huge", "word", "lines"):  # mostly inside the canvas, but may run off an edge
            x = int(rng.uniform(-0.15, 0.15) * width + (width - mask.width) / 2)
            y = int(rng.uniform(-0.15, 0.15) * height + (height - mask.height) / 2)
        else:
            x = int(rng.uniform(0, width) - mask.width / 2)
            y = int(rng.uniform(0, height) - mask.height / 2)
        image.paste(ink(), (x, y, x + mask.width, y + mask.height), mask)
    return variant, image


# ------------------------------------------------------------------------------------------------- blobs


def _polar_blob(rng: Rng) -> np.ndarray:
    """A smooth closed outline: the radius is 1 plus a few low-frequency sinusoids, always positive."""
    t = np.linspace(0.0, 2 * np.pi, 256, endpoint=False)
    radius = np.ones_like(t)
    for k in range(2, int(rng.integers(3, 8))):
        radius += rng.uniform(0, 0.4 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _blob_mask(rng: Rng, size: tuple[int, int], variant: str) -> Image.Image:
    width, height = size
    short = min(size)
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if variant == "polar":
        radius = rng.uniform(0.15, 0.45) * short
        centre = (rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height)
        scale = (radius, radius * rng.uniform(0.5, 1.0))
        angle = rng.uniform(0, 360)
        draw.polygon(_transform(_polar_blob(rng), scale, angle, centre), fill=255)
        if rng.random() < 0.25:  # a hole, which no leaf silhouette has
            hole = rng.uniform(0.15, 0.45)
            draw.polygon(_transform(_polar_blob(rng), (scale[0] * hole, scale[1] * hole), angle, centre), fill=0)
        return mask
    if variant == "metaball":
        y, x = _grid(size)
        field = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(2, 8))):
            cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
            sigma = rng.uniform(0.05, 0.18) * short
            field += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        return _to_image((field > rng.uniform(0.3, 0.7)).astype(np.float32))
    # Union of ellipses, blurred and thresholded: lumpy outlines with smooth concave necks between the lumps.
    for _ in range(int(rng.integers(2, 9))):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.05, 0.25) * short, rng.uniform(0.05, 0.25) * short
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    blurred = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.03, 0.08) * short))
    return blurred.point(lambda v: 255 if v >= 110 else 0)


def _blobs(rng: Rng, size: tuple[int, int]) -> tuple[str, Image.Image]:
    short = min(size)
    scan_like = rng.random() < 0.5
    if scan_like:
        background, foreground = _scan_colours(rng)
        image = Image.new("L", size, background)
    else:
        bg = np.ones(3) if rng.random() < 0.2 else _hsv(rng)
        image = Image.new("RGB", size, _rgb(bg))
    count = 1 if rng.random() < 0.55 else int(rng.integers(2, 5))
    variants = [str(rng.choice(["polar", "metaball", "ellipses"])) for _ in range(count)]
    for variant in variants:
        mask = _blob_mask(rng, size, variant)
        if rng.random() < 0.2:
            mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(1, 0.03 * short + 1)))
        if scan_like:
            image.paste(foreground if rng.random() < 0.7 else int(rng.integers(100, 256)), (0, 0), mask)
        elif rng.random() < 0.3:  # shaded with noise, the way a photographed pebble or sponge would be
            shade = _ramp(_fractal_noise(rng, size, rng.uniform(2, 8), 4), [_hsv(rng), _contrasting(rng, bg)])
            image.paste(_to_image(shade), (0, 0), mask)
        else:
            image.paste(_rgb(_contrasting(rng, bg)), (0, 0), mask)
    return variants[0], image


# ---------------------------------------------------------------------------------------------- textures

_TEXTURES = ("stripes", "checker", "plaid", "wood", "brick", "fractal", "bark", "marble")


def _texture_field(rng: Rng, size: tuple[int, int], variant: str) -> np.ndarray:
    """A [0, 1] field of the texture; colour is applied afterwards, the same way for every variant."""
    width, height = size
    y, x = _grid(size)
    angle = rng.uniform(0, np.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    period = rng.uniform(4, 0.25 * min(size) + 5)
    if variant == "stripes":
        wave = np.sin(2 * np.pi * u / period)
        shape = rng.integers(0, 3)
        if shape == 0:
            return 0.5 + 0.5 * wave
        if shape == 1:
            return (wave > rng.uniform(-0.6, 0.6)).astype(np.float32)
        return (u / period) % 1.0
    if variant == "checker":
        return ((np.floor(u / period) + np.floor(v / (period * rng.uniform(0.5, 2.0)))) % 2).astype(np.float32)
    if variant == "plaid":
        total = np.zeros((height, width), np.float32)
        for coordinate in (u, v):
            for _ in range(int(rng.integers(2, 5))):
                band_period = rng.uniform(10, 0.5 * min(size) + 11)
                band_width = rng.uniform(0.08, 0.45)
                total += rng.uniform(0.3, 1.0) * (((coordinate / band_period) % 1.0) < band_width)
        return _normalise(total)
    if variant == "wood":
        cx, cy = rng.uniform(-0.5, 1.5) * width, rng.uniform(-0.5, 1.5) * height
        squash = rng.uniform(0.05, 1.0)  # a long, flat-sawn grain or a round end grain
        along = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
        across = (y - cy) * math.cos(angle) - (x - cx) * math.sin(angle)
        d = np.sqrt(squash * along**2 + across**2)
        warp = _fractal_noise(rng, size, rng.uniform(2, 6), 4) * rng.uniform(0.5, 4)
        return ((d / period + warp) % 1.0) ** rng.uniform(0.5, 2.0)
    if variant == "brick":
        brick_h = rng.uniform(8, 0.2 * height + 9)
        brick_w = brick_h * rng.uniform(1.5, 4.0)
        mortar = max(1.0, brick_h * rng.uniform(0.05, 0.2))
        row = np.floor(y / brick_h)
        shifted = x + (row % 2) * brick_w / 2
        column = np.floor(shifted / brick_w)
        shade = rng.random(4096).astype(np.float32)  # one random tone per brick
        tone = 0.55 + 0.35 * shade[((row * 131 + column * 7919) % 4096).astype(np.int64)]
        joints = ((y % brick_h) < mortar) | ((shifted % brick_w) < mortar)
        return np.where(joints, 0.0, tone).astype(np.float32)
    if variant == "fractal":
        return _fractal_noise(rng, size, rng.uniform(1.5, 12), int(rng.integers(2, 7)), rng.uniform(0.35, 0.7))
    if variant == "bark":
        # Streaks: noise stretched along the grain, plus darker furrows where the stretched noise is low.
        grain_w, grain_h = max(2, int(rng.uniform(0.1, 0.35) * width)), int(rng.integers(2, 7))
        coarse = rng.random((grain_h, grain_w), dtype=np.float32)
        streaks = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))
        fine = _fractal_noise(rng, size, rng.uniform(4, 16), 4)
        field = _normalise(0.7 * streaks + 0.3 * fine)
        return np.where(field < rng.uniform(0.2, 0.4), field * 0.4, field)
    # marble: stripes bent by turbulence
    turbulence = _fractal_noise(rng, size, rng.uniform(2, 6), 5)
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u / period + rng.uniform(1, 6) * turbulence))


def _textures(rng: Rng, size: tuple[int, int]) -> tuple[str, Image.Image]:
    variant = str(rng.choice(_TEXTURES))
    field = np.clip(_texture_field(rng, size, variant), 0.0, 1.0)
    style = rng.random()
    if style < 0.15:  # binary white on black, like a silhouette scan
        return variant, _to_image((field > rng.uniform(0.3, 0.7)).astype(np.float32))
    if style < 0.35:
        low, high = sorted(rng.uniform(0, 1, size=2))
        return variant, _to_image(low + (high - low + 0.2) * field)
    colours = [_hsv(rng) for _ in range(int(rng.integers(2, 5)))]
    if variant in ("wood", "bark") and rng.random() < 0.6:  # browns most of the time, since that is what wood is
        base = rng.uniform(0.04, 0.12)
        colours = [np.array(colorsys.hsv_to_rgb(base, rng.uniform(0.4, 0.9), rng.uniform(0.15, 0.9))) for _ in range(3)]
    return variant, _to_image(_ramp(field, colours))


# ------------------------------------------------------------------------------------------------- noise

_NOISES = ("gaussian", "uniform", "salt_pepper", "flat", "gradient", "blocky")


def _noise(rng: Rng, size: tuple[int, int]) -> tuple[str, Image.Image]:
    width, height = size
    variant = str(rng.choice(_NOISES))
    grey = rng.random() < 0.4
    shape = (height, width) if grey else (height, width, 3)
    if variant == "gaussian":
        pixels = rng.normal(rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.35), size=shape)
    elif variant == "uniform":
        low, high = sorted(rng.uniform(0, 1, size=2))
        pixels = rng.uniform(low, max(high, low + 0.05), size=shape)
    elif variant == "salt_pepper":
        base = str(rng.choice(["black", "white", "flat", "gaussian"]))
        if base == "gaussian":
            pixels = rng.normal(0.5, 0.1, size=shape)
        elif base == "flat":
            pixels = np.full(shape, rng.uniform(0.1, 0.9) if grey else _hsv(rng))
        else:
            pixels = np.full(shape, 0.0 if base == "black" else 1.0)
        hit = rng.random((height, width)) < rng.uniform(0.005, 0.5)
        salt = rng.random((height, width)) < rng.uniform(0.2, 0.8)
        pixels[hit & salt] = 1.0  # a boolean (H, W) index sets all channels of a colour pixel at once
        pixels[hit & ~salt] = 0.0
    elif variant == "flat":
        # Blank frames are the commonest OOD input of all: an empty scanner bed, a lens cap, a white page.
        choice = rng.random()
        if choice < 0.3:
            level = float(rng.choice([0.0, 1.0]))
            pixels = np.full(shape, level)
        else:
            pixels = np.full(shape, rng.uniform(0, 1) if grey else _hsv(rng, sat=(0, 1), val=(0, 1)))
    elif variant == "gradient":
        y, x = _grid(size)
        if rng.random() < 0.7:
            angle = rng.uniform(0, 2 * np.pi)
            t = _normalise(x * math.cos(angle) + y * math.sin(angle))
        else:
            cx, cy = rng.uniform(0, 1) * width, rng.uniform(0, 1) * height
            t = _normalise(np.hypot(x - cx, y - cy))
        colours = [_hsv(rng, sat=(0, 1), val=(0, 1)) for _ in range(int(rng.integers(2, 4)))]
        pixels = _ramp(t, colours)
        if grey:
            pixels = pixels.mean(axis=-1)
    else:
        block = int(rng.integers(2, max(3, min(size) // 4)))
        small = rng.random((max(1, height // block), max(1, width // block), *shape[2:]))
        pixels = np.asarray(_to_image(small).resize(size, Image.Resampling.NEAREST), np.float32) / 255.0
    image = _to_image(np.asarray(pixels, np.float32))
    if variant in ("gaussian", "uniform", "salt_pepper") and rng.random() < 0.35:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 4.0)))
    return variant, image


# ------------------------------------------------------------------------------------------------ scenes

# Colour ranges (RGB in [0, 1]) of each time of day or season; every scene jitters its own copy.
_PALETTES: dict[str, dict[str, list[tuple[float, float, float]]]] = {
    "day": {
        "sky_top": [(0.15, 0.4, 0.85)],
        "sky_low": [(0.65, 0.82, 0.95)],
        "land": [(0.25, 0.5, 0.2), (0.4, 0.6, 0.25), (0.35, 0.45, 0.3)],
        "canopy": [(0.15, 0.45, 0.15), (0.25, 0.55, 0.2)],
        "light": [(1.0, 0.97, 0.8)],
    },
    "dusk": {
        "sky_top": [(0.25, 0.2, 0.5)],
        "sky_low": [(0.98, 0.55, 0.3)],
        "land": [(0.25, 0.2, 0.3), (0.35, 0.25, 0.3), (0.2, 0.18, 0.22)],
        "canopy": [(0.12, 0.12, 0.15), (0.2, 0.15, 0.2)],
        "light": [(1.0, 0.75, 0.4)],
    },
    "night": {
        "sky_top": [(0.01, 0.02, 0.08)],
        "sky_low": [(0.08, 0.1, 0.25)],
        "land": [(0.05, 0.07, 0.1), (0.08, 0.1, 0.12), (0.03, 0.04, 0.06)],
        "canopy": [(0.02, 0.04, 0.05), (0.05, 0.07, 0.08)],
        "light": [(0.95, 0.95, 0.88)],
    },
    "autumn": {
        "sky_top": [(0.35, 0.5, 0.75)],
        "sky_low": [(0.8, 0.82, 0.85)],
        "land": [(0.55, 0.4, 0.15), (0.45, 0.35, 0.2), (0.6, 0.5, 0.25)],
        "canopy": [(0.8, 0.35, 0.08), (0.85, 0.6, 0.1), (0.6, 0.15, 0.08)],
        "light": [(1.0, 0.92, 0.7)],
    },
}


def _pick(rng: Rng, palette: dict, key: str, sigma: float = 0.05) -> np.ndarray:
    options = palette[key]
    base = np.asarray(options[int(rng.integers(len(options)))])
    # Brightness varies more than hue: per-channel noise alone turns dark night greens into purples.
    return np.clip(base * rng.uniform(0.8, 1.2) + rng.normal(0, sigma, size=3), 0.0, 1.0).astype(np.float32)


def _scenes(rng: Rng, size: tuple[int, int]) -> tuple[str, Image.Image]:
    width, height = size
    name = str(rng.choice(list(_PALETTES)))
    palette = _PALETTES[name]
    # Rows and columns as broadcastable vectors: most of a scene varies along one axis only, and full
    # coordinate grids would triple the work of every step.
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    horizon = rng.uniform(0.3, 0.7) * height
    sky_top, sky_low = _pick(rng, palette, "sky_top"), _pick(rng, palette, "sky_low")
    t = np.clip(y / horizon, 0, 1)[..., None] ** rng.uniform(0.6, 1.6)
    pixels = np.broadcast_to((1 - t) * sky_top + t * sky_low, (height, width, 3)).copy()
    sky = y < horizon
    if name == "night":
        stars = (rng.random((height, width)) < rng.uniform(0.0005, 0.004)) & sky
        pixels[stars] = rng.uniform(0.7, 1.0)
    elif rng.random() < 0.7:
        cover = _fractal_noise(rng, size, rng.uniform(2, 6), 5)
        level = rng.uniform(0.45, 0.75)
        cloud = (np.clip((cover - level) / 0.2, 0, 1) * sky)[..., None]
        pixels += cloud * (np.clip(sky_low + 0.25, 0, 1) - pixels)

    if rng.random() < 0.7:  # sun or moon, with a glow that falls off smoothly
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.05, 0.9) * horizon
        r = rng.uniform(0.02, 0.08) * width + 2
        d = np.hypot(x - cx, y - cy)
        light = _pick(rng, palette, "light", 0.02)
        pixels += (np.exp(-((d / (3 * r)) ** 2)) * rng.uniform(0.2, 0.6))[..., None] * light
        pixels[d <= r] = light

    water = rng.random() < 0.35
    water_line = horizon + rng.uniform(0.05, 0.3) * (height - horizon) if water else height + 1
    layers = int(rng.integers(1, 4))
    relief = _fractal_noise(rng, size, rng.uniform(3, 10), 4)[..., None]  # shared by the layers: it is costly
    for layer in range(layers):  # far to near: later layers are lower, darker and less hazy
        base = horizon + (layer / layers) * 0.5 * (water_line - horizon if water else height - horizon)
        amplitude = rng.uniform(0.03, 0.25) * height
        ridge = base - amplitude * _noise_1d(rng, width, int(rng.integers(2, 7)), 4)
        land = y >= ridge[None, :]
        colour = _pick(rng, palette, "land")
        haze = 0.5 * (1 - (layer + 1) / layers)
        colour = (1 - haze) * colour + haze * sky_low
        shade = colour * (0.75 + 0.5 * relief)
        if not water and layer == layers - 1 and rng.random() < 0.5:  # fields: bands that narrow with distance
            bands = np.floor(np.log1p(np.maximum(y - base, 0) / (0.02 * height)) * rng.uniform(1.5, 3.5))
            tint = rng.uniform(0.7, 1.2, size=(64, 3)).astype(np.float32)[(bands % 64).astype(np.int64)]
            shade *= tint
        np.copyto(pixels, shade, where=land[..., None])
    below = math.ceil(water_line)
    if water and below < height:
        mirror = np.clip(2 * water_line - np.arange(below, height), 0, height - 1).astype(np.int64)
        ripples = _value_noise(rng, (max(2, width // 8), height - below), rng.uniform(20, 60))
        ripples = np.asarray(Image.fromarray(ripples).resize((width, height - below), Image.Resampling.BILINEAR))
        tint = _pick(rng, palette, "sky_low") * 0.4
        pixels[below:] = 0.55 * pixels[mirror] + tint + 0.12 * (ripples[..., None] - 0.5)

    image = _to_image(np.clip(pixels, 0, 1).astype(np.float32))
    draw = ImageDraw.Draw(image)
    ground_top = horizon + 0.02 * height
    trees = int(rng.integers(0, 8))
    for _ in range(trees):
        foot_y = rng.uniform(ground_top, water_line if water else 1.1 * height)  # on land, not in the lake
        tree_h = (0.1 + 0.6 * (foot_y - horizon) / max(height - horizon, 1)) * height * rng.uniform(0.6, 1.3)
        foot_x = rng.uniform(-0.05, 1.05) * width
        trunk_w = tree_h * rng.uniform(0.03, 0.08)
        trunk = (0.3, 0.2, 0.12) if name != "night" else (0.03, 0.03, 0.03)
        trunk_colour = _rgb(np.asarray(trunk) + rng.normal(0, 0.04, 3))
        top = foot_y - tree_h
        draw.polygon(
            [
                (foot_x - trunk_w, foot_y),
                (foot_x + trunk_w, foot_y),
                (foot_x + 0.5 * trunk_w, top + 0.3 * tree_h),
                (foot_x - 0.5 * trunk_w, top + 0.3 * tree_h),
            ],
            fill=trunk_colour,
        )
        if rng.random() < 0.3:  # conifer: stacked triangles
            for k in range(int(rng.integers(2, 5))):
                level = top + k * 0.18 * tree_h
                half = tree_h * (0.12 + 0.07 * k)
                tier = [(foot_x, level), (foot_x - half, level + 0.3 * tree_h), (foot_x + half, level + 0.3 * tree_h)]
                draw.polygon(tier, fill=_rgb(_pick(rng, palette, "canopy") * 0.7))
        else:  # broadleaf: a crown of overlapping ellipses
            crown = tree_h * rng.uniform(0.25, 0.45)
            cy = top + crown
            for _ in range(int(rng.integers(3, 9))):
                ex, ey = foot_x + rng.normal(0, 0.4) * crown, cy + rng.normal(0, 0.3) * crown
                rx, ry = crown * rng.uniform(0.35, 0.7), crown * rng.uniform(0.3, 0.6)
                draw.ellipse((ex - rx, ey - ry, ex + rx, ey + ry), fill=_rgb(_pick(rng, palette, "canopy", 0.03)))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    if rng.random() < 0.2:  # a grey-scale photo of the same scene
        image = image.convert("L")
    return name, image


# ----------------------------------------------------------------------------------- leaf-derived families


def _leaf_pixels(leaf: Image.Image) -> np.ndarray:
    """Which pixels belong to the leaf: those well above the (dark) background."""
    pixels = np.asarray(leaf.convert("L"), np.float32)
    return pixels > max(32.0, 0.5 * float(pixels.max()))


def _leaf_box(on: np.ndarray) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the leaf's pixels, or the whole image if none stand out."""
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if rows.size == 0:
        return (0, 0, on.shape[1], on.shape[0])
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


_RESAMPLERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _leaf_crops(rng: Rng, size: tuple[int, int], leaf: Image.Image) -> tuple[str, Image.Image]:
    on = _leaf_pixels(leaf)
    left, top, right, bottom = _leaf_box(on)
    box_w, box_h = right - left, bottom - top
    # Most windows inside a leaf's box are all blade, a flat white frame the noise family already has; so
    # most crops look a few times for a window across the margin, where the teeth and lobes are.
    tries = 8 if rng.random() < 0.75 else 1
    for _ in range(tries):
        crop_w = max(2, round(rng.uniform(0.10, 0.35) * box_w))
        crop_h = max(2, round(rng.uniform(0.10, 0.35) * box_h))
        x = left + round(rng.uniform(0, max(0, box_w - crop_w)))
        y = top + round(rng.uniform(0, max(0, box_h - crop_h)))
        share = float(on[y : y + crop_h, x : x + crop_w].mean())
        if 0.05 < share < 0.95:
            break
    kind = "edge" if 0.0 < share < 1.0 else "blade" if share == 1.0 else "background"
    resample = _RESAMPLERS[int(rng.integers(len(_RESAMPLERS)))]
    return kind, leaf.crop((x, y, x + crop_w, y + crop_h)).resize(size, resample)


def _leaf_inverted(rng: Rng, size: tuple[int, int], leaf: Image.Image) -> tuple[str, Image.Image]:
    image = ImageOps.invert(leaf)
    variant = "plain"
    if rng.random() < 0.5:
        variant = "rotated"
        white = 255 if image.mode == "L" else (255, 255, 255)  # the inverted background, so no black corners
        image = image.rotate(rng.uniform(0, 360), Image.Resampling.BICUBIC, expand=True, fillcolor=white)
    return variant, image.resize(_fit_size(*image.size, rng), Image.Resampling.BICUBIC)


def _leaf_blurred(rng: Rng, size: tuple[int, int], leaf: Image.Image) -> tuple[str, Image.Image]:
    out = _fit_size(*leaf.size, rng)
    if rng.random() < 0.5:
        image = leaf.resize(out, Image.Resampling.BICUBIC)
        radius = rng.uniform(0.08, 0.25) * min(out)
        return "gaussian", image.filter(ImageFilter.GaussianBlur(radius))
    tiny = (int(rng.integers(4, 9)), int(rng.integers(4, 9)))
    up = _RESAMPLERS[int(rng.integers(len(_RESAMPLERS)))]
    return "pixelated", leaf.resize(tiny, Image.Resampling.BOX).resize(out, up)


# ----------------------------------------------------------------------------------------------- the set

_Painter = Callable[[Rng, tuple[int, int]], tuple[str, Image.Image]]
_LeafPainter = Callable[[Rng, tuple[int, int], Image.Image], tuple[str, Image.Image]]
_PAINTERS: dict[str, _Painter] = {
    "geometric": _geometric,
    "glyphs": _glyphs,
    "blobs": _blobs,
    "textures": _textures,
    "noise": _noise,
    "scenes": _scenes,
}
_LEAF_PAINTERS: dict[str, _LeafPainter] = {
    "leaf_crops": _leaf_crops,
    "leaf_inverted": _leaf_inverted,
    "leaf_blurred": _leaf_blurred,
}


def _family_key(family: str) -> int:
    """A stable 64-bit number for a family name (Python's hash() changes from run to run)."""
    return int.from_bytes(hashlib.sha256(family.encode()).digest()[:8], "little")


def _leaf_order(seed: int, family: str, count: int, n_leaves: int) -> list[int]:
    """Which leaf each image of a family uses: shuffled cycles, so every leaf is used before any repeats."""
    rng = np.random.default_rng([seed, _family_key(family)])
    order: list[int] = []
    while len(order) < count:
        order.extend(int(i) for i in rng.permutation(n_leaves))
    return order[:count]


def _check_args(per_family, seed, families) -> tuple[int, int, list[str]]:
    try:
        per_family, seed = operator.index(per_family), operator.index(seed)
    except TypeError:
        raise LeafnetError(f"per_family and seed must be integers, got {per_family!r} and {seed!r}") from None
    if per_family < 1:
        raise LeafnetError(f"per_family must be at least 1, got {per_family}")
    if seed < 0:
        raise LeafnetError(f"seed must be a non-negative integer, got {seed}")
    requested = [families] if isinstance(families, str) else list(families)
    for family in requested:
        if family not in OOD_FAMILIES:
            raise LeafnetError(f"unknown OOD family {family!r}; choose from {', '.join(OOD_FAMILIES)}")
    return per_family, seed, [f for f in OOD_FAMILIES if f in requested]


def generate_ood(
    per_family: int = 60,
    seed: int = 0,
    leaves: Sequence[Image.Image] = (),
    families: Sequence[str] = OOD_FAMILIES,
) -> list[OodImage]:
    """`per_family` images of each requested family, grouped in the order of OOD_FAMILIES.

    `leaves` feeds the leaf-derived families (e.g. the test split's images); they are needed only when one
    of LEAF_FAMILIES is requested. The result is a pure function of the arguments.
    """
    per_family, seed, chosen = _check_args(per_family, seed, families)
    leaf_families = [f for f in chosen if f in LEAF_FAMILIES]
    sources: list[Image.Image] = []
    if leaf_families:
        if not leaves:
            raise LeafnetError(
                f"OOD family {leaf_families[0]} needs leaf images: pass leaves= (e.g. the test split's images) "
                f"or leave {', '.join(leaf_families)} out of families="
            )
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, Image.Image) or min(leaf.size) < 1:
                raise LeafnetError(f"leaves[{i}] is not a non-empty PIL image: {leaf!r}")
        sources = [_as_rgb_or_l(leaf) for leaf in leaves]

    images: list[OodImage] = []
    for family in chosen:
        key = _family_key(family)
        picks = _leaf_order(seed, family, per_family, len(sources)) if family in LEAF_FAMILIES else []
        for index in range(per_family):
            rng = np.random.default_rng([seed, key, index])
            size = _canvas_size(rng)
            if family in LEAF_FAMILIES:
                variant, image = _LEAF_PAINTERS[family](rng, size, sources[picks[index]])
            else:
                variant, image = _PAINTERS[family](rng, size)
            images.append(OodImage(family, f"{family}-{index:04d}-{variant}", _as_rgb_or_l(image)))
    return images


def _safe_part(text: str, what: str) -> str:
    if not text or text.startswith(".") or any(c in text for c in '/\\:*?"<>|\0'):
        raise LeafnetError(f"OOD image {what} {text!r} is not a safe file name")
    return text


def write_ood(images: Sequence[OodImage], out_dir: Path) -> Path:
    """Writes `<out_dir>/<family>/<name>.png` for each image and returns out_dir; other files there stay."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LeafnetError(f"{out_dir} exists and is not a directory; give write_ood a directory path")
    seen: set[tuple[str, str]] = set()
    for item in images:
        key = (_safe_part(item.family, "family"), _safe_part(item.name, "name"))
        if key in seen:  # a second image of the same name would silently replace the first
            raise LeafnetError(f"two OOD images are both named {item.family}/{item.name}")
        seen.add(key)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in images:
        folder = out_dir / item.family
        folder.mkdir(exist_ok=True)
        item.image.save(folder / f"{item.name}.png")
    return out_dir


LEAF_SOURCES = 64  # test-split leaves the leaf families are made from, spread over the classes


def leaves_of(prepared_root: Path, count: int = LEAF_SOURCES) -> list[Image.Image]:
    """`count` images of a prepared data root's test split, spread evenly over it (manifests are sorted by
    class, so over the classes too), as RGB images: the sources of the leaf families."""
    samples = PreparedData(Path(prepared_root)).samples("test")
    if not samples:
        raise LeafnetError(f"{prepared_root} has no test images to make the leaf families from")
    picks = np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int)
    leaves = []
    for index in picks:
        with Image.open(samples[index][0]) as image:
            leaves.append(image.convert("RGB"))
    return leaves
