"""The preprocessing spec (preprocess.json, leafnet's PreprocessSpec as a dict) applied to uploaded bytes.

decode (alpha over the spec's background) -> fit to the square prepare made of every training image ->
timm's eval transform in numpy (resize the shorter side to input_size / crop_pct, centre-crop, normalise),
so a served image reaches the model exactly as a test image did in evaluation (a test checks the
numpy transform against timm's).

The decoder fits an upload as prepare did without building it, or its letterbox square, at full size
(image_io.decode_upload): bit for bit what prepare makes of it, except that a large JPEG decodes at a
reduced DCT scale. Specs without a fit (data not prepared by leafnet) decode at full size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .image_io import Deadline, decode_upload

# The pixel cap when model-config.yaml sets no max_image_pixels, derived from the side the preprocessing
# first resizes an upload to (fit_size, else input_size / crop_pct): uploads up to 32 times that side per
# side pass (4096 x 4096 for prepare's 128 px); more only costs decoding time and memory, the model would
# see fewer than 1 in 1,000 of their pixels. Then clamped to:
CAP_SIDES_PER_SIDE = 32
# a floor: a 12 MP phone photo (4032 x 3024) passes whatever the model. Photos come as JPEG, which
# decodes at 1/8 scale here, so they are cheap;
CAP_FLOOR_PIXELS = 12_200_000
# a ceiling: PNG, TIFF and WebP decode at full size, lossy WebP slowest (PIL has no reduced-size WebP
# decoding) and WebP largest (PIL holds its picture four times). The largest cap at which each format's
# most expensive image stays within the 300 MB and 0.5 s a worker may spend on a request (docs/serving.md,
# Bounded cost per request). With today's decoders it meets the floor: every model gets 12.2 MP unless
# max_image_pixels says otherwise.
CAP_CEILING_PIXELS = 12_200_000
# The letterbox square is built reduced, a band at a time, and a band holds at least one block row of it
# (side x side / (3 x fit_size) pixels): its side is capped at twice a max_pixels square's (6,985 px at
# 12.2 MP), so panoramas pass and a 16 x 100,000 strip does not.
LETTERBOX_AREAS = 4
# Seconds one image may take to decode and fit when model-config.yaml sets no prepare_timeout_s: twice the
# 0.5 s the most expensive accepted image may take, so only a starved CPU or an image the pixel cap did
# not foresee reaches it. Checked between stages; TorchServe's responseTimeout is the hard backstop.
DEFAULT_PREPARE_TIMEOUT_S = 1.0

INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def eval_tensor(image: Image.Image, spec: dict) -> np.ndarray:
    """timm's eval transform (resize shorter side to input_size / crop_pct, centre crop, normalise)."""
    size = spec["input_size"]
    scale = int(size / spec["crop_pct"])  # timm: math.floor
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = scale, int(scale * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_size != image.size:
        image = image.resize(new_size, INTERPOLATION[spec["interpolation"]])
    left = round((image.width - size) / 2.0)  # torchvision's CenterCrop
    top = round((image.height - size) / 2.0)
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return array.transpose(2, 0, 1)


def first_resize_side(spec: dict) -> int:
    """The side the preprocessing first resizes an upload to: prepare's fit, else the eval resize."""
    return spec.get("fit_size") or int(spec["input_size"] / spec["crop_pct"])


def default_max_pixels(spec: dict) -> int:
    """The pixel cap for this spec when none is set: see CAP_SIDES_PER_SIDE, CAP_FLOOR_PIXELS and
    CAP_CEILING_PIXELS."""
    derived = (CAP_SIDES_PER_SIDE * first_resize_side(spec)) ** 2
    return min(CAP_CEILING_PIXELS, max(CAP_FLOOR_PIXELS, derived))


class Preprocessor:
    """One spec, applied to any number of uploads, each refused over `max_pixels` (default: derived from the
    spec) or `timeout_s` seconds of preparation."""

    def __init__(self, spec: dict, max_pixels: int | None = None, timeout_s: float | None = None) -> None:
        self.spec, self.timeout_s = spec, timeout_s
        self.max_pixels = max_pixels or default_max_pixels(spec)
        # PIL refuses images over its own limit before leafnet's cap is checked: a cap above it would be a lie.
        if Image.MAX_IMAGE_PIXELS and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise ValueError(
                f"max_image_pixels={self.max_pixels} is over PIL's decompression-bomb limit "
                f"Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}"
            )
        self.background = tuple(spec.get("background") or (0, 0, 0))

    @property
    def fit(self) -> tuple[int, str] | None:
        """(fit_size, fit_mode) when prepare fitted the training images, else None."""
        return (self.spec["fit_size"], self.spec["fit_mode"]) if self.spec.get("fit_size") else None

    def deadline(self) -> Deadline:
        """A request's time limit, started now."""
        return Deadline(self.timeout_s)

    def fitted(self, data: bytes, deadline: Deadline | None = None) -> tuple[Image.Image, tuple[int, int]]:
        """The decoded image fitted as prepare fitted training images, and the upload's own size.
        Raises RejectedImage for bytes that are not a usable image or take longer than the time limit."""
        fit = self.fit
        max_square = LETTERBOX_AREAS * self.max_pixels if fit and fit[1] == "pad" else None
        return decode_upload(
            data, self.max_pixels, background=self.background, fit=fit, max_square=max_square,
            deadline=deadline or self.deadline(),
        )  # fmt: skip

    def tensor(self, image: Image.Image) -> np.ndarray:
        """The model input (C, H, W float32) of a fitted image."""
        return eval_tensor(image, self.spec)
