"""Training augmentation as one warp at a multiple of the output size, then PIL's filter down to it.

The staged pipeline (`leafnet.data.staged`) rotates every pixel of the prepared image, then resizes each
sample's crop with PIL's antialiased bilinear filter: two resamplings of the whole image. This samples the
rotated, cropped and flipped image once, with `grid_sample`, on a grid `factor` times finer than the output
(about one sample per prepared pixel, so the rotation is interpolated at the prepared image's scale, as the
staged pipeline's is), and reduces that grid by `factor` with the triangle filter PIL's bilinear resize uses
for that ratio, renormalised within the crop at its edges as PIL's is. The model sees the same geometry (the
same draws, from the same seeds) and the same kind of blur: a triangle as wide as the crop's scale, over
bilinearly interpolated rotated pixels. Not the same numbers: the staged pipeline interpolates the rotation
at the prepared pixels' own grid and filters it with weights for the crop's exact scale, this at a grid of
the crop's and with the factor's weights.

The one-resampling warp (`leafnet.data.warp`) goes straight to the output from a reduced image; its
rotation is interpolated at the output's scale, which blurs the leaves' margins (docs/training.md).

`factor` follows from the prepared image's side and the output's (`supersampling_factor`): fixed for a data
set, so a sample's pixels depend on its seed alone, never on the batch it lands in.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import grid_sample

from leafnet.data.staged import RotateCropResize, rotations, sampling_grid
from leafnet.errors import LeafnetError

# The most prepared pixels between two grid samples of a whole-image crop: bilinear interpolation that skips
# more than this starts to alias (the warp's shrink is at most 1.2x, `leafnet.data.warp`).
MAX_SPACING = 1.25


def supersampling_factor(image_side: int, output_size: int) -> int:
    """How many grid samples per output pixel along each axis: the fewest that leave a whole-image crop at most
    MAX_SPACING prepared pixels apart (128 px leaves to 56 px: 2, 1.14 pixels apart)."""
    return max(1, math.ceil(image_side / (output_size * MAX_SPACING)))


def require_bilinear(interpolation: str) -> None:
    """The warp filters with PIL's bilinear triangle only; another filter is the staged pipeline's to apply."""
    if interpolation != "bilinear":
        raise LeafnetError(
            f"data.augment.implementation=supersampled filters with PIL's bilinear triangle; "
            f"interpolation {interpolation!r} needs implementation=staged"
        )


def triangle_weights(factor: int) -> list[int]:
    """PIL's bilinear (triangle) filter shrinking by exactly `factor`, over the grid samples nearest each output
    pixel's centre, as whole numbers in proportion (`filter_down` leaves the division by their sum to the
    normalisation): [2] for 1, [1, 3, 3, 1] for 2, [2, 4, 6, 4, 2] for 3 (1, 2, 3, 2, 1)."""
    count = factor + 2 * (factor // 2)  # the samples within `factor` of the centre, in sample units
    return [2 * factor - abs(2 * t - (count - 1)) for t in range(count)]


def filter_down(samples: torch.Tensor, factor: int, output_size: int, dim: int) -> torch.Tensor:
    """`samples` along `dim` (factor * output_size inside the crop, and factor // 2 past each end of it) ->
    `output_size`: each output the `triangle_weights`-weighted sum of its taps (not divided by their sum), as
    strided views of the samples, the symmetric taps added first (for 2: three passes over the output, no
    convolution kernel's set-up). The first and last outputs leave out their taps past the crop and are scaled up
    to the full sum, as PIL renormalises its filter within the crop: outside it may be image or background.
    torch's antialiased `interpolate` of the crop's samples gives the same numbers up to float rounding, in
    nearly twice the time for the demo's batch (a timing in docs/training.md)."""
    weights = triangle_weights(factor)
    length = factor * (output_size - 1) + 1
    leading = (slice(None),) * (dim % samples.dim())

    def tap(start: int) -> torch.Tensor:
        return samples.narrow(dim, start, length)[(*leading, slice(None, None, factor))]

    out = None
    for first in range((len(weights) + 1) // 2):
        last, weight = len(weights) - 1 - first, weights[first]
        if last == first:  # an odd factor's centre tap: a view, never written to
            out = tap(first) * weight if out is None else out.add_(tap(first), alpha=weight)
            continue
        pair = tap(first) + tap(last)  # a new tensor
        if out is None:
            out = pair.mul_(weight) if weight != 1 else pair
        else:
            out.add_(pair, alpha=weight)
    return _renormalise_ends(out, samples, weights, factor // 2, dim)


def _renormalise_ends(out: torch.Tensor, samples: torch.Tensor, weights: list[int], past: int, dim: int):
    """`filter_down`'s ends: the taps of the first and last outputs that lie past the crop (the first and last
    `past` samples) subtracted, the rest scaled up to the weights' full sum."""
    if not past:
        return out
    size, count = out.shape[dim], samples.shape[dim]
    first, last = out.narrow(dim, 0, 1), out.narrow(dim, size - 1, 1)
    for t in range(past):
        first.sub_(samples.narrow(dim, t, 1), alpha=weights[t])
        last.sub_(samples.narrow(dim, count - 1 - t, 1), alpha=weights[t])
    total, left_out = sum(weights), sum(weights[:past])
    if size == 1:  # one output: both ends are the same pixel
        first.mul_(total / (total - 2 * left_out))
        return out
    first.mul_(total / (total - left_out))
    last.mul_(total / (total - left_out))
    return out


def crop_matrices(params: torch.Tensor, width: int, height: int, grid_side: int, factor: int) -> torch.Tensor:
    """(N, 2, 3) `grid_sample` matrices taking the grid's [-1, 1] coordinates to the source's: the flipped crop
    box in the rotated image (the grid reaching `factor // 2` samples past each side of it, for the filter's
    taps), then the rotation about the image centre, as the staged pipeline turns it."""
    angle, left, top, w, h, hflip, vflip = params.double().unbind(1)
    extent = grid_side / (grid_side - 2 * (factor // 2))  # the grid's half-width over the crop's
    half_x = extent * w / width * torch.where(hflip.bool(), -1.0, 1.0)
    half_y = extent * h / height * torch.where(vflip.bool(), -1.0, 1.0)
    centre_x, centre_y = (2 * left + w) / width - 1, (2 * top + h) / height - 1
    # grid (u, v) -> the rotated image's normalised point (half_x u + centre_x, half_y v + centre_y) -> the source
    zero = torch.zeros_like(angle)
    crop = torch.stack([torch.stack([half_x, zero, centre_x], 1), torch.stack([zero, half_y, centre_y], 1)], 1)
    return (rotations(width, height, angle) @ crop).float()


class SupersampledWarp(RotateCropResize):
    """uint8 HWC image tensor -> normalised float CHW tensor of `output_size`: the staged pipeline's draws
    (rotation, whole-pixel crop, flips) rendered by one finer `grid_sample` and PIL's triangle filter."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        require_bilinear(self.interpolation)

    def _render(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        source = self._shifted(images)
        height, width = source.shape[2:]
        factor = supersampling_factor(max(height, width), self.output_size)
        side = factor * self.output_size + 2 * (factor // 2)
        grid = sampling_grid(crop_matrices(params, width, height, side, factor), side, side)
        samples = grid_sample(source, grid, mode=self.rotation_mode, padding_mode="zeros", align_corners=False)
        out = filter_down(filter_down(samples, factor, self.output_size, -1), factor, self.output_size, -2)
        return out * (self.gain / sum(triangle_weights(factor)) ** 2) + self.offset
