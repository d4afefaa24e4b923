"""Training augmentation as one affine warp, straight to the model's input size.

Rotation, random-resized crop and flips are each an affine map of the image plane, so their product is
one: a single `grid_sample` computes every output pixel once, from a source already reduced (with
antialiasing, once, and cached; `leafnet.data.cache`) so that the smallest crop still has a source pixel
per output pixel; a larger crop is shrunk by the warp without antialiasing, by at most 1/sqrt(min scale)
(1.2x for the leaves' scale of 0.7; photos' 0.08 would be 3.5x, and they take timm's pipeline anyway when
they use its colour or RandAugment options).
The pixel-by-pixel pipeline it replaces (rotate the whole prepared image, crop, resize, flip: four
resamplings of up to 128 x 128 images, in PIL, per sample per epoch) cost about a fifth of a 2-core
machine's training throughput; docs/training.md has the measurement.

The sampled geometry follows the pipeline it replaces: the rotation (uniform in ±rotation_deg about the
centre, the uncovered corners filled with the background) happens before the crop, and the crop is
timm's RandomResizedCrop's (area share uniform in `scale`, log aspect ratio uniform in `ratio`, ten
tries to fit, else the whole image). Randomness comes from torch's default generator, which the dataset
seeds per sample (`leafnet.data.dataset.seeded_rng`), so a sample's pixels depend only on its seed.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import affine_grid, grid_sample

# grid_sample's modes for a PreprocessSpec's interpolation (it has no lanczos; bicubic is the nearest)
GRID_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "lanczos": "bicubic"}
CROP_TRIES = 10  # as timm's RandomResizedCrop


def working_side(output_size: int, min_scale: float) -> int:
    """The source side the warp reads: the smallest crop (area share `min_scale`) still covers about
    `output_size` source pixels, so the warp never shrinks by much and needs no antialiasing."""
    return math.ceil(output_size / math.sqrt(max(min_scale, 1e-6)))


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]) -> tuple:
    """(centre x, centre y, crop width, crop height) in pixels from the image's centre, sampled as
    timm's RandomResizedCrop samples them (continuous positions instead of whole pixels)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(*log_ratio))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            cx = _uniform(-(width - w) / 2, (width - w) / 2)
            cy = _uniform(-(height - h) / 2, (height - h) / 2)
            return cx, cy, w, h
    return 0.0, 0.0, float(width), float(height)


def warp_matrix(
    width: int,
    height: int,
    angle_deg: float,
    box: tuple[float, float, float, float],
    hflip: bool,
    vflip: bool,
) -> torch.Tensor:
    """The 2x3 `affine_grid` matrix taking output coordinates ([-1, 1], align_corners=False) to source
    ones: flip, then the crop box in the rotated image, then the rotation undone about the centre."""
    cx, cy, w, h = box
    theta = math.radians(angle_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    # output -> crop, in pixels from the image centre; a flip mirrors the output about the crop's axis
    a = torch.tensor([[(-w if hflip else w) / 2, 0.0, cx], [0.0, (-h if vflip else h) / 2, cy]], dtype=torch.float64)
    rotate = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    to_normalised = torch.diag(torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64))
    return (to_normalised @ rotate @ a).float()


class AffineWarp:
    """uint8 HWC image tensor -> normalised float CHW tensor of `output_size`, randomly rotated,
    cropped and flipped in one resampling."""

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
        self.output_size, self.mode = output_size, GRID_MODES[interpolation]
        self.rotation_deg, self.scale, self.ratio = rotation_deg, tuple(scale), tuple(ratio)
        self.hflip, self.vflip = hflip, vflip
        std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
        background_t = torch.tensor(background, dtype=torch.float32)[:, None, None]
        self.background = background_t
        # normalise((v + background) / 255) = v * gain + offset, for v = the warped (image - background)
        self.gain = 1.0 / (255.0 * std_t)
        self.offset = (background_t / 255.0 - torch.tensor(mean, dtype=torch.float32)[:, None, None]) / std_t

    def sample(self, width: int, height: int) -> torch.Tensor:
        angle = _uniform(-self.rotation_deg, self.rotation_deg) if self.rotation_deg > 0 else 0.0
        box = crop_box(width, height, self.scale, self.ratio)
        hflip = self.hflip > 0 and torch.rand(()).item() < self.hflip
        vflip = self.vflip > 0 and torch.rand(()).item() < self.vflip
        return warp_matrix(width, height, angle, box, hflip, vflip)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[:2]
        theta = self.sample(width, height)
        # Shifted so the background is 0: grid_sample's zero padding then fills uncovered pixels with it.
        source = (image.permute(2, 0, 1).float() - self.background)[None]
        size = (1, source.shape[1], self.output_size, self.output_size)
        grid = affine_grid(theta[None], list(size), align_corners=False)
        warped = grid_sample(source, grid, mode=self.mode, padding_mode="zeros", align_corners=False)[0]
        if self.mode == "bicubic":  # bicubic overshoots; PIL clamps to the pixel range, so does this
            warped = torch.maximum(torch.minimum(warped, 255.0 - self.background), -self.background)
        return warped * self.gain + self.offset
