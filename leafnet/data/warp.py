"""Training augmentation as one affine warp, straight to the model's input size.

Rotation, random-resized crop and flips are each an affine map of the image plane, so their product is
one: a single `grid_sample` computes every output pixel once, from a source already reduced (with
antialiasing, once, and cached; `leafnet.data.cache`) so that the smallest crop still has a source pixel
per output pixel; a larger crop is shrunk by the warp without antialiasing, by at most 1/sqrt(min scale)
(1.2x for the leaves' scale of 0.7; photos' 0.08 would be 3.5x, and they take timm's pipeline anyway when
they use its colour or RandAugment options).
The cheapest augmentation leafnet has, and an option only (`data.augment.implementation=warp`): its
models score 2 to 3 points lower on a large held-out set than timm's pipeline's, because the rotation is
resampled at the output's scale, blurring fine margins by an amount that varies with the angle
(docs/training.md). The staged pipeline (`leafnet.data.staged`) keeps timm's separate steps instead, and the
supersampled warp (`leafnet.data.supersampled`) samples at about the prepared image's own scale.

The sampled geometry follows the pipeline it replaces: the rotation (uniform in ±rotation_deg about the
centre, the uncovered corners filled with the background) happens before the crop, and the crop is
timm's RandomResizedCrop's (area share uniform in `scale`, log aspect ratio uniform in `ratio`, ten
tries to fit, else the whole image), each sample's from its own seed (`leafnet.data.batch_augment`).
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import affine_grid, grid_sample

from leafnet.data.batch_augment import CROP_TRIES, BatchAugment, Draws

# grid_sample's modes for a PreprocessSpec's interpolation (it has no lanczos; bicubic is the nearest)
GRID_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "lanczos": "bicubic"}


def working_side(output_size: int, min_scale: float) -> int:
    """The source side the warp reads: the smallest crop (area share `min_scale`) still covers about
    `output_size` source pixels, so the warp never shrinks by much and needs no antialiasing."""
    return math.ceil(output_size / math.sqrt(max(min_scale, 1e-6)))


def crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], draws: Draws | None = None
) -> tuple:
    """(centre x, centre y, crop width, crop height) in pixels from the image's centre, sampled as
    timm's RandomResizedCrop samples them (continuous positions instead of whole pixels)."""
    draws = draws or Draws(None)
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target = area * draws.uniform(*scale)
        aspect = math.exp(draws.uniform(*log_ratio))
        cx_unit, cy_unit = draws.uniform(-0.5, 0.5), draws.uniform(-0.5, 0.5)
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            return cx_unit * (width - w), cy_unit * (height - h), w, h
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
    # output -> crop, in pixels from the image centre (a flip mirrors the output about the crop's axis):
    # [[sx, 0, cx], [0, sy, cy]]; then the rotation [[cos, -sin], [sin, cos]]; then pixels -> [-1, 1]
    sx, sy = (-w if hflip else w) / 2, (-h if vflip else h) / 2
    to_x, to_y = 2.0 / width, 2.0 / height
    rows = [
        [to_x * cos * sx, -to_x * sin * sy, to_x * (cos * cx - sin * cy)],
        [to_y * sin * sx, to_y * cos * sy, to_y * (sin * cx + cos * cy)],
    ]
    return torch.tensor(rows, dtype=torch.float32)


class AffineWarp(BatchAugment):
    """uint8 HWC image tensor -> normalised float CHW tensor of `output_size`, randomly rotated,
    cropped and flipped in one resampling."""

    @property
    def mode(self) -> str:
        return GRID_MODES[self.interpolation]

    def sample(self, width: int, height: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample's 2x3 matrix (`warp_matrix`), every number drawn from `generator` (a sample's own,
        seeded with its seed, so that its pixels depend on that seed alone; torch's default when None)."""
        draws = Draws(generator)
        angle = draws.uniform(-self.rotation_deg, self.rotation_deg)
        box = crop_box(width, height, self.scale, self.ratio, draws)
        hflip = draws.uniform(0.0, 1.0) < self.hflip
        vflip = draws.uniform(0.0, 1.0) < self.vflip
        return warp_matrix(width, height, angle, box, hflip, vflip)

    def apply(self, images: torch.Tensor, thetas: torch.Tensor, grey: bool | None = None) -> torch.Tensor:
        """uint8 NHWC images of one size and a `sample`d 2x3 matrix each -> normalised float NCHW: one
        resampling call for the whole batch, which spreads over the intra-op threads (of every channel: `grey`
        is not used)."""
        # Shifted so the background is 0: grid_sample's zero padding then fills uncovered pixels with it.
        source = images.permute(0, 3, 1, 2).float() - self.background
        size = (source.shape[0], source.shape[1], self.output_size, self.output_size)
        grid = affine_grid(thetas, list(size), align_corners=False)
        warped = grid_sample(source, grid, mode=self.mode, padding_mode="zeros", align_corners=False)
        if self.mode == "bicubic":  # bicubic overshoots; PIL clamps to the pixel range, so does this
            warped = torch.maximum(torch.minimum(warped, 255.0 - self.background), -self.background)
        return warped * self.gain + self.offset
