"""The supersampled warp (leafnet/data/supersampled.py): its filter is PIL's bilinear reduction by the factor,
and its geometry is the staged pipeline's (where both are exact, on a linear ramp, they agree)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as tvf

from leafnet.data.staged import RotateCropResize
from leafnet.data.supersampled import SupersampledWarp, filter_down, supersampling_factor, triangle_weights
from leafnet.data.transforms import AugmentConfig, PreprocessSpec, augment_implementation, train_transform
from leafnet.errors import LeafnetError

MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("output", [9, 1])
def test_the_filter_is_pils_bilinear_reduction_by_the_factor_edges_included(factor, output):
    """PIL's resize of the crop alone: the samples past its ends (here noise) do not count, the ends renormalise."""
    rng = np.random.default_rng(factor)
    plane = rng.uniform(0, 255, (factor * output, factor * output)).astype(np.float32)
    reference = np.asarray(Image.fromarray(plane, "F").resize((output, output), Image.Resampling.BILINEAR))
    pad = factor // 2
    samples = torch.from_numpy(rng.uniform(0, 255, (factor * output + 2 * pad,) * 2).astype(np.float32))
    samples[pad : pad + factor * output, pad : pad + factor * output] = torch.from_numpy(plane)
    before = samples.clone()
    reduced = filter_down(filter_down(samples, factor, output, -1), factor, output, -2)
    assert np.allclose(reduced.numpy() / sum(triangle_weights(factor)) ** 2, reference, atol=1e-3)
    assert torch.equal(samples, before)  # the grid samples are read, not written


def bilinear_at(plane: np.ndarray, x: float, y: float) -> float:
    """`plane` (float, shifted so the background is 0) at pixel coordinates (centres at i + 0.5), bilinear, zero
    outside: what grid_sample with align_corners=False and zero padding computes."""
    x, y = x - 0.5, y - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    value = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < plane.shape[1] and 0 <= yy < plane.shape[0]:
                value += wy * wx * plane[yy, xx]
    return value


def reference_pixels(plane: np.ndarray, params: list[float], output: int, factor: int) -> np.ndarray:
    """The warp written out from its definition, one output pixel at a time: the crop box's grid of factor x factor
    samples per output pixel, flipped within the box, turned about the image centre (a point of the turned image
    at offset d from the centre is the source's at R(-angle) d: torchvision's counter-clockwise turn on screen),
    sampled bilinearly, then PIL's triangle over the samples inside the crop."""
    height, width = plane.shape
    angle, left, top, w, h, hflip, vflip = params
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    taps = {j: 1 - abs(j + 0.5 - factor / 2) / factor for j in range(-factor, 2 * factor)}
    taps = {j: weight for j, weight in taps.items() if weight > 0}
    out = np.zeros((output, output))
    for oy in range(output):
        for ox in range(output):
            total = weights = 0.0
            for jy, wy in taps.items():
                for jx, wx in taps.items():
                    sx, sy = factor * ox + jx, factor * oy + jy
                    if not (0 <= sx < factor * output and 0 <= sy < factor * output):
                        continue  # past the crop: PIL renormalises within it
                    u, v = (sx + 0.5) / (factor * output), (sy + 0.5) / (factor * output)
                    u, v = (1 - u if hflip else u), (1 - v if vflip else v)
                    dx, dy = left + u * w - width / 2, top + v * h - height / 2
                    x, y = width / 2 + cos * dx - sin * dy, height / 2 + sin * dx + cos * dy
                    total += wx * wy * bilinear_at(plane, x, y)
                    weights += wx * wy
            out[oy, ox] = total / weights
    return out


@pytest.mark.parametrize("width, height, factor", [(19, 14, 2), (22, 27, 3), (37, 29, 4), (10, 7, 1)])
def test_every_pixel_is_the_warps_definition_on_non_square_images(width, height, factor):
    """Random angles, crops and flips, and the whole image, at factors 1 to 4: against the definition."""
    output = 8
    warp = SupersampledWarp(output, [0.0], [1.0], [9], "bilinear", 20.0, (0.3, 1.0), (0.75, 1.33), 0.5, 0.5)
    warp.gain, warp.offset = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)  # the shifted pixel values themselves
    rng = np.random.default_rng(width)
    image = torch.from_numpy(rng.integers(0, 256, (height, width, 1), dtype=np.uint8))
    assert supersampling_factor(max(width, height), output) == factor
    for seed in range(4):
        params = warp.sample(width, height, torch.Generator().manual_seed(seed))
        params[5], params[6] = float(seed & 1), float(seed >> 1 & 1)
        if seed == 3:
            params[1:5] = torch.tensor([0.0, 0.0, width, height], dtype=torch.float64)  # the whole image
        got = warp.apply(image[None], params[None])[0, 0].double().numpy()
        expected = reference_pixels(image[..., 0].double().numpy() - 9, params.tolist(), output, factor)
        assert np.abs(got - expected).max() < 1e-3, (seed, params.tolist())


def test_uncovered_corners_take_the_background():
    """A constant image turned by 45 degrees: the crop's corners fall outside it and are the background."""
    warp = SupersampledWarp(16, MEAN, STD, [40, 40, 40], "bilinear", 45.0)
    image = torch.full((1, 64, 64, 3), 200, dtype=torch.uint8)
    params = torch.tensor([[45.0, 0, 0, 64, 64, 0, 0]], dtype=torch.float64)
    out = warp.apply(image, params)[0]
    background = (40 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    leaf = (200 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[:, 0, 0], background, atol=1e-4) and torch.allclose(out[:, 8, 8], leaf, atol=1e-4)


def ramp(width: int, height: int) -> torch.Tensor:
    """A uint8 HWC image linear in x and y: bilinear interpolation and a symmetric filter reproduce it exactly."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (2 * xs + 3 * ys + 20).to(torch.uint8)[..., None].expand(height, width, 3).contiguous()


@pytest.mark.parametrize("angle", [0.0, 12.0, -7.5])
@pytest.mark.parametrize("hflip, vflip", [(False, False), (True, False), (False, True)])
def test_its_geometry_is_torchvisions_rotation_then_the_crop_and_flips(angle, hflip, vflip):
    """On a ramp, torchvision's rotation is another ramp (away from the corners); each output pixel must be its
    value at the pixel's centre in the (flipped) crop box, away from the crop's ends. The staged pipeline's PIL
    weights are off centre by a fraction of a pixel depending on the phase, so it agrees only to that."""
    width, height, output = 52, 44, 16
    left, top, w, h = 14, 12, 22, 19
    args = (output, MEAN, STD, [0, 0, 0], "bilinear", 20.0, (0.5, 1.0), (0.8, 1.25), 0.5, 0.5)
    params = torch.tensor([[angle, left, top, w, h, float(hflip), float(vflip)]], dtype=torch.float64)
    image = ramp(width, height)
    supersampled = SupersampledWarp(*args).apply(image[None], params)[0]
    assert supersampling_factor(width, output) == 3

    turned = tvf.rotate(image[..., 0][None].float(), angle, tvf.InterpolationMode.BILINEAR)[0]
    x0, y0 = width // 2, height // 2  # the turned ramp's slopes and value there (pixel centres at +0.5)
    dx, dy, value = turned[y0, x0 + 1] - turned[y0, x0], turned[y0 + 1, x0] - turned[y0, x0], turned[y0, x0]
    steps = torch.arange(output, dtype=torch.float32) + 0.5
    xs = left + (steps.flip(0) if hflip else steps) * w / output - (x0 + 0.5)
    ys = top + (steps.flip(0) if vflip else steps) * h / output - (y0 + 0.5)
    expected = (value + dx * xs[None, :] + dy * ys[:, None]) / 255
    expected = (expected[None] - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    # the ends renormalise within the crop as PIL does, off the ramp by a fraction of a pixel
    assert torch.allclose(supersampled[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=2e-4)

    staged = RotateCropResize(*args).apply(image[None], params)[0]
    assert torch.allclose(supersampled[:, 1:-1, 1:-1], staged[:, 1:-1, 1:-1], atol=3e-3)


def test_a_grey_batch_is_one_plane_and_the_same_numbers_as_three():
    args = (12, MEAN, STD, [9, 9, 9], "bilinear", 20.0, (0.5, 1.0), (0.8, 1.25), 0.5, 0.5)
    warp = SupersampledWarp(*args)
    grey = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (4, 30, 30, 1), dtype=np.uint8))
    images = grey.expand(4, 30, 30, 3).contiguous()
    params = torch.stack([warp.sample(30, 30, torch.Generator().manual_seed(seed)) for seed in range(4)])
    assert torch.allclose(warp.apply(images, params, grey=True), warp.apply(images, params, grey=False), atol=1e-5)


def test_only_the_bilinear_filter_is_supersampled(prepared_synthetic):
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=40, interpolation="bicubic")
    with pytest.raises(LeafnetError, match="interpolation 'bicubic' needs implementation=staged"):
        train_transform(spec, AugmentConfig(implementation="supersampled"))
    with pytest.raises(LeafnetError, match="interpolation 'lanczos' needs implementation=staged"):
        augment_implementation(AugmentConfig(implementation="supersampled"), "lanczos")  # as config validation asks
    with pytest.raises(LeafnetError, match="interpolation 'nearest' needs implementation=staged"):
        SupersampledWarp(8, MEAN, STD, [0, 0, 0], "nearest")
