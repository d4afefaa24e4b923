"""The supersampled warp (leafnet/data/supersampled.py): its filter is PIL's bilinear reduction by the factor,
and its geometry is the staged pipeline's (where both are exact, on a linear ramp, they agree)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as tvf

from leafnet.data.staged import RotateCropResize
from leafnet.data.supersampled import SupersampledWarp, filter_down, supersampling_factor, triangle_weights
from leafnet.data.transforms import AugmentConfig, PreprocessSpec, train_transform
from leafnet.errors import LeafnetError

MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_the_filter_is_pils_bilinear_reduction_by_the_factor(factor):
    output = 9
    plane = np.random.default_rng(factor).uniform(0, 255, (factor * output, factor * output)).astype(np.float32)
    reference = np.asarray(Image.fromarray(plane, "F").resize((output, output), Image.Resampling.BILINEAR))
    pad = factor // 2  # the taps past the edge, where PIL renormalises over the image instead
    samples = torch.nn.functional.pad(torch.from_numpy(plane), (pad, pad, pad, pad))
    before = samples.clone()
    reduced = (
        filter_down(filter_down(samples, factor, output, -1), factor, output, -2) / sum(triangle_weights(factor)) ** 2
    )
    inner = slice(1, -1) if factor > 1 else slice(None)
    assert np.allclose(reduced.numpy()[inner, inner], reference[inner, inner], atol=1e-3)
    assert torch.equal(samples, before)  # the grid samples are read, not written


def ramp(width: int, height: int) -> torch.Tensor:
    """A uint8 HWC image linear in x and y: bilinear interpolation and a symmetric filter reproduce it exactly."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (2 * xs + 3 * ys + 20).to(torch.uint8)[..., None].expand(height, width, 3).contiguous()


@pytest.mark.parametrize("angle", [0.0, 12.0, -7.5])
@pytest.mark.parametrize("hflip, vflip", [(False, False), (True, False), (False, True)])
def test_its_geometry_is_torchvisions_rotation_then_the_crop_and_flips(angle, hflip, vflip):
    """On a ramp, torchvision's rotation is another ramp (away from the corners); each output pixel must be its
    value at the pixel's centre in the (flipped) crop box. The staged pipeline's PIL weights are off centre by a
    fraction of a pixel depending on the phase, so it agrees only to that."""
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
    assert torch.allclose(supersampled, expected, atol=2e-4)

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
