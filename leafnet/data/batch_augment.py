"""What the batch augmentations (`leafnet.data.staged`, `leafnet.data.supersampled`, `leafnet.data.warp`) share:
the base class the dataset renders a batch at a time with, the normalisation they fold in, and each sample's
uniform draws.

A sample's numbers come from its own generator, which the dataset seeds with the sample's seed, so its
pixels depend on that seed alone, whichever batch or process draws it.
"""

from __future__ import annotations

import torch

from leafnet.errors import LeafnetError

# The interpolations a PreprocessSpec may name: timm's names, each mapped to PIL's by the handler
# (leafnet/serving/preprocess.py INTERPOLATION; a test keeps the two equal).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
CROP_TRIES = 10  # as timm's RandomResizedCrop

# Uniform draws a sample may need, taken in one call: the angle, CROP_TRIES x (area, log ratio, x, y), two flips
DRAWS = 1 + 4 * CROP_TRIES + 2


class Draws:
    """Uniform [0, 1) numbers for one sample, drawn in one call from `generator` (torch's default when
    None) and handed out in order: one generator call per sample instead of one per number."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.values = iter(torch.rand(DRAWS, generator=generator, dtype=torch.float64).tolist())

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * next(self.values)


class BatchAugment:
    """A training augmentation built a batch at a time: `sample` draws one sample's parameters as a tensor
    row (from the sample's own generator), `apply` renders uint8 NHWC images of one size with a row each
    into normalised float NCHW. The dataset batches any subclass (`ManifestDataset.__getitems__`).
    The options are timm's: the rotation's range in degrees, RandomResizedCrop's area share and aspect ratio
    ranges, the flips' probabilities; images are normalised with mean/std after /255."""

    def __init__(
        self,
        output_size: int,
        mean: list[float],
        std: list[float],
        background: list[int],
        interpolation: str = "bilinear",
        rotation_deg: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        ratio: tuple[float, float] = (1.0, 1.0),
        hflip: float = 0.0,
        vflip: float = 0.0,
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise LeafnetError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        self.output_size, self.interpolation = output_size, interpolation
        self.rotation_deg, self.scale, self.ratio = rotation_deg, tuple(scale), tuple(ratio)
        self.hflip, self.vflip = hflip, vflip
        self.background, self.gain, self.offset = normaliser(mean, std, background)

    def sample(self, width: int, height: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: torch.Tensor, grey: bool | None = None) -> torch.Tensor:
        """`grey`: whether every image's channels are equal, when the caller knows (None: unknown), for an
        augmentation that can then resample one plane instead of three (the staged pipeline and the supersampled
        warp; the warp ignores it)."""
        raise NotImplementedError

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        height, width = image.shape[:2]
        return self.apply(image[None], self.sample(width, height, generator)[None])[0]


def channels_equal(images: torch.Tensor) -> bool:
    """True when the uint8 ...HWC image(s) have three channels, equal at every pixel (a grey image)."""
    return (
        images.shape[-1] == 3
        and torch.equal(images[..., 0], images[..., 1])
        and torch.equal(images[..., 0], images[..., 2])
    )


def normaliser(mean: list[float], std: list[float], background: list[int]) -> tuple:
    """(background, gain, offset) for images shifted so the background is 0: normalise((v + background) / 255)
    = v * gain + offset. Zero padding then fills uncovered pixels with the background."""
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    background_t = torch.tensor(background, dtype=torch.float32)[:, None, None]
    offset = (background_t / 255.0 - torch.tensor(mean, dtype=torch.float32)[:, None, None]) / std_t
    return background_t, 1.0 / (255.0 * std_t), offset
