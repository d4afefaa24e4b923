"""The preprocessing spec (preprocess.json, leafnet's PreprocessSpec as a dict) applied to uploaded bytes.

decode (alpha over the spec's background) -> fit to the square prepare made of every training image ->
timm's eval transform in numpy (resize the shorter side to input_size / crop_pct, centre-crop, normalise),
so a served image reaches the model exactly as a test image did in evaluation (a test checks the
numpy transform against timm's).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .image_io import DEFAULT_MAX_PIXELS, decode_image, fit_square

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


class Preprocessor:
    """One spec, applied to any number of uploads."""

    def __init__(self, spec: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.spec, self.max_pixels = spec, max_pixels
        self.background = tuple(spec.get("background") or (0, 0, 0))

    def fitted(self, data: bytes) -> tuple[Image.Image, tuple[int, int]]:
        """The decoded image fitted as prepare fitted training images, and the upload's own size.
        Raises RejectedImage for bytes that are not a usable image."""
        image = decode_image(data, max_pixels=self.max_pixels, background=self.background)
        upload_size = image.size
        if self.spec.get("fit_size"):
            image = fit_square(image, self.spec["fit_size"], self.spec["fit_mode"], self.background)
        return image, upload_size

    def tensor(self, image: Image.Image) -> np.ndarray:
        """The model input (C, H, W float32) of a fitted image."""
        return eval_tensor(image, self.spec)
