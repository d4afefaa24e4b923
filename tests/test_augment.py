"""Training augmentation built a batch at a time, as one affine warp (leafnet/data/warp.py) or as timm's
steps in torch (leafnet/data/staged.py), and the in-memory cache of decoded images (leafnet/data/cache.py):
the geometry is the one they replace, a cached item is the uncached item, and workers fill one cache that
every process sees."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as tvf

from leafnet.data.batch_augment import Draws, channels_equal
from leafnet.data.cache import DecodedCache
from leafnet.data.dataset import ManifestDataset
from leafnet.data.loaders import LoaderConfig, auto_workers, build_loader
from leafnet.data.staged import RotateCropResize, crop_pixels, rotation_matrices, sampling_grid
from leafnet.data.transforms import (
    AugmentConfig,
    PreprocessSpec,
    augment_implementation,
    eval_transform,
    train_transform,
)
from leafnet.data.warp import AffineWarp, warp_matrix, working_side
from leafnet.errors import LeafnetError

MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]


def normalised(image: torch.Tensor) -> torch.Tensor:
    """What the eval pipeline makes of a uint8 HWC image at its own size."""
    return tvf.normalize(image.permute(2, 0, 1).float() / 255, MEAN, STD)


def warped(image: torch.Tensor, angle=0.0, hflip=False, vflip=False, background=(0, 0, 0)) -> torch.Tensor:
    """The warp with fixed geometry: the whole image (no crop), at its own size."""
    height, width = image.shape[:2]
    warp = AffineWarp(width, MEAN, STD, list(background))
    theta = warp_matrix(width, height, angle, (0.0, 0.0, float(width), float(height)), hflip, vflip)
    return warp.apply(image[None], theta[None])[0]


@pytest.fixture
def image() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))


def test_the_identity_warp_reproduces_the_image_and_flips_mirror_it_exactly(image):
    assert torch.allclose(warped(image), normalised(image), atol=1e-5)
    assert torch.allclose(warped(image, hflip=True), normalised(image).flip(-1), atol=1e-5)
    assert torch.allclose(warped(image, vflip=True), normalised(image).flip(-2), atol=1e-5)


def test_a_quarter_turn_is_a_pixel_exact_rotation_and_uncovered_corners_take_the_background(image):
    turned = warped(image, angle=90.0)
    assert any(torch.allclose(turned, normalised(image).rot90(k, dims=(-2, -1)), atol=1e-4) for k in (1, 3))
    background = (255, 255, 255)
    tilted = warped(image, angle=45.0, background=background)
    white = normalised(torch.full((1, 1, 3), 255, dtype=torch.uint8))[:, 0, 0]
    assert torch.allclose(tilted[:, 0, 0], white, atol=1e-4)  # a corner: outside the rotated image


def test_the_batch_augmentations_sample_timms_crop_distribution(prepared_synthetic):
    """Same options, two implementations: the share of leaf pixels (the crop's zoom) and its spread agree."""
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=32)
    foreground = {}
    for implementation in ("warp", "staged", "supersampled", "timm"):
        augment = AugmentConfig(implementation=implementation)
        dataset = ManifestDataset(prepared_synthetic, "train", train_transform(spec, augment))
        background = torch.tensor([(0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)])[:, None, None]
        shares = [
            (dataset[(i % len(dataset), seed)][0] - background).abs().sum(0).gt(0.5).float().mean().item()
            for seed, i in enumerate(range(0, 400, 2))
        ]
        foreground[implementation] = (np.mean(shares), np.std(shares))
    timm_mean, timm_std = foreground["timm"]
    for implementation in ("warp", "staged", "supersampled"):
        mean, std = foreground[implementation]
        assert abs(mean - timm_mean) < 0.1 * timm_mean and abs(std - timm_std) < 0.25 * timm_std, implementation


@pytest.mark.parametrize("implementation", ["warp", "staged", "supersampled", "timm"])
def test_a_cached_item_is_the_uncached_item_for_training_and_evaluation(prepared_synthetic, implementation):
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=40)
    augment = AugmentConfig(implementation=implementation)
    for split, transform in [("train", train_transform(spec, augment)), ("val", eval_transform(spec))]:
        plain = ManifestDataset(prepared_synthetic, split, transform)
        cached = ManifestDataset(prepared_synthetic, split, transform)
        assert cached.cache_in_memory(64)
        for index in (0, 5, 17):
            key = (index, 1234 + index) if split == "train" else index
            first, again = cached[key][0], cached[key][0]  # decoded and stored, then read from memory
            assert torch.equal(first, plain[key][0]) and torch.equal(again, first)
        assert cached.cache.filled[[0, 5, 17]].all()
    # the same seed gives the same sample; another seed another
    assert torch.equal(cached[3][0], plain[3][0])
    train = ManifestDataset(prepared_synthetic, "train", train_transform(spec, augment))
    assert torch.equal(train[(3, 7)][0], train[(3, 7)][0]) and not torch.equal(train[(3, 7)][0], train[(3, 8)][0])


@pytest.mark.parametrize("implementation", ["warp", "staged", "supersampled"])
def test_a_batch_rendered_in_one_call_is_the_items_one_by_one_whatever_its_sizes(prepared_synthetic, implementation):
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=40)
    warp = AugmentConfig(implementation=implementation)
    plain = ManifestDataset(prepared_synthetic, "train", train_transform(spec, warp))
    cached = ManifestDataset(prepared_synthetic, "train", train_transform(spec, warp))
    assert cached.cache_in_memory(64) and cached.batches_augment and not plain.batches_augment
    timm = ManifestDataset(prepared_synthetic, "train", train_transform(spec, AugmentConfig(implementation="timm")))
    assert timm.cache_in_memory(64) and not timm.batches_augment
    odd = torch.full((50, 44, 3), 90, dtype=torch.uint8)  # another size: warped in a call of its own
    cached._prepared = lambda index, prepared=cached._prepared: odd if index == 4 else prepared(index)
    keys = [(index, 99 + index) for index in (3, 4, 8, 3)]
    batch = cached.__getitems__(keys)
    assert [label for _, label in batch] == [plain.samples[index][1] for index, _ in keys]
    assert torch.equal(batch[1][0], cached._item(odd, 103))
    for position in (0, 2, 3):  # the same arithmetic per image; matrix products may only round differently
        assert torch.allclose(batch[position][0], plain[keys[position]][0], atol=1e-5)
    assert not torch.equal(batch[0][0], cached[(3, 100)][0])  # another seed, another sample


def test_a_batch_with_one_colour_image_is_resampled_in_every_channel(prepared_synthetic, monkeypatch):
    """The dataset tells the staged pipeline a batch is grey only when every image in it is: one colour image
    among grey ones of its size keeps its colours, in the batch as one by one."""
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=40)
    transform = train_transform(spec, AugmentConfig(implementation="staged"))
    cached = ManifestDataset(prepared_synthetic, "train", transform)
    assert cached.cache_in_memory(64)
    grey = cached._prepared(4)
    colour = grey.clone()
    colour[..., 1] //= 2  # the same leaf, tinted: the channels differ wherever the leaf is
    cached._prepared = lambda index, prepared=cached._prepared: colour if index == 4 else prepared(index)
    rendered = []
    real_render = transform.item._render
    monkeypatch.setattr(
        transform.item,
        "_render",
        lambda images, params: rendered.append(images.shape[-1]) or real_render(images, params),
    )
    grey_keys = [(index, 7 + index) for index in (3, 8, 9)]
    cached.__getitems__(grey_keys)
    keys = [*grey_keys, (4, 11)]
    batch = cached.__getitems__(keys)
    assert rendered == [1, 3]  # the grey batch as one plane, the batch with the colour image as three
    for position, key in enumerate(keys):
        assert torch.allclose(batch[position][0], cached[key][0], atol=1e-5)
    tinted = batch[3][0]
    assert not torch.allclose(tinted[0], tinted[1], atol=0.1)  # its colour kept


def test_a_cached_eval_batch_is_its_items_one_by_one_to_the_bit(prepared_synthetic):
    """Validation reads its cached split a batch at a time: the same to-tensor and normalisation, in one call."""
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=40)
    plain = ManifestDataset(prepared_synthetic, "val", eval_transform(spec))
    cached = ManifestDataset(prepared_synthetic, "val", eval_transform(spec))
    assert not plain.batches_items and cached.cache_in_memory(64) and cached.batches_items
    assert not cached.batches_augment  # nothing random: validation's loader sizing is not a training batch's
    indices = list(range(len(cached)))
    batch = cached.__getitems__(indices)
    assert [label for _, label in batch] == [plain.samples[index][1] for index in indices]
    for index, (image, _) in zip(indices, batch, strict=True):
        assert torch.equal(image, plain[index][0])
    loader = build_loader(cached, LoaderConfig(batch_size=7, workers=0), train=False)
    assert torch.equal(torch.cat([images for images, _ in loader]), torch.stack([plain[i][0] for i in indices]))


@pytest.mark.parametrize("rotation", ["bilinear", "nearest"])
def test_the_staged_pipeline_is_timms_pil_steps_up_to_rounding(prepared_synthetic, rotation):
    """Rotation of the whole image, whole-pixel crop, antialiased resize, flip: torchvision's PIL functions
    (what the timm pipeline runs) and the staged batch give the same tensor up to PIL's uint8 rounding."""
    spec = PreprocessSpec.from_prepared(prepared_synthetic)  # at the prepared size
    dataset = ManifestDataset(prepared_synthetic, "train", eval_transform(spec))
    # not square, and larger than the output, so that crops shrink (the antialiased path) and a swapped
    # height and width would show
    images = [dataset._prepared(i)[:, 5:-3] for i in range(8)]
    height, width = images[0].shape[:2]
    assert width < height and min(width, height) * 0.5 > 16
    for background, bound in (([0, 0, 0], 0.004), ([40, 90, 160], 0.006)):
        # With the images' own black as the fill the two agree to about a uint8 step (1/255/std = 0.006 here);
        # with another fill they differ along the rotated image's edge, where PIL takes either the fill or the
        # image and torch blends the two: a line of pixels, a few percent of the image.
        geometry = (16, MEAN, STD, background, "bilinear", 20.0, (0.5, 1.0), (0.75, 1.33), 0.5, 0.5)
        staged = RotateCropResize(*geometry, rotation_interpolation=rotation)
        params = torch.stack([staged.sample(width, height, torch.Generator().manual_seed(seed)) for seed in range(8)])
        for column in (5, 6):  # flips of both kinds drawn, and not always
            assert params[:, column].any() and not params[:, column].all()
        assert params[:, 0].abs().max() > 5
        batch = staged.apply(torch.stack(images), params)
        for image, row, rendered in zip(images, params.tolist(), batch, strict=True):
            angle, left, top, w, h, hflip, vflip = row
            bilinear = tvf.InterpolationMode.BILINEAR
            turn = tvf.InterpolationMode(rotation)
            pil = tvf.rotate(tvf.to_pil_image(image.permute(2, 0, 1)), angle, interpolation=turn, fill=background)
            pil = tvf.resized_crop(pil, int(top), int(left), int(h), int(w), [16, 16], bilinear, antialias=True)
            pil = tvf.vflip(pil) if vflip else pil
            expected = tvf.normalize(tvf.to_tensor(tvf.hflip(pil) if hflip else pil), MEAN, STD)
            difference = (rendered - expected).abs()
            assert difference.mean() < bound and (difference > 0.1).float().mean() < 0.04


@pytest.mark.parametrize("output_size", [24, 72])  # shrinking and enlarging crops
def test_the_staged_bilinear_resize_as_matrix_products_is_torchs_antialiased_interpolate(output_size):
    generator = torch.Generator().manual_seed(3)
    source = torch.rand(6, 3, 40, 50, generator=generator) * 255
    boxes = torch.tensor(
        [[0, 0, 50, 40], [3, 5, 30, 33], [10, 2, 17, 20], [0, 7, 49, 25], [20, 20, 30, 20], [1, 1, 5, 6]]
    )
    hflip = torch.tensor([False, True, False, True, False, True])
    vflip = torch.tensor([False, False, True, True, False, False])
    staged = RotateCropResize(output_size, MEAN, STD, [0, 0, 0])
    by_matrices = staged._resize_bilinear(source, boxes, hflip, vflip)
    by_interpolate = staged._resize_each(source, boxes, hflip, vflip)
    assert (by_matrices - by_interpolate).abs().max() < 0.01  # of 255


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])  # batched resize, per-crop ones
def test_a_grey_batch_is_resampled_once_and_each_channel_gets_its_own_resamplings_numbers(interpolation):
    plane = torch.randint(0, 256, (6, 40, 50, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    grey = plane.expand(-1, -1, -1, 3)
    staged = RotateCropResize(24, MEAN, STD, [7, 7, 7], interpolation, 20.0, (0.5, 1.0), (0.8, 1.25), 0.5, 0.5)
    params = torch.stack([staged.sample(50, 40, torch.Generator().manual_seed(seed)) for seed in range(6)])
    assert channels_equal(grey) and channels_equal(grey[0])
    once = staged.apply(grey, params)
    per_channel = staged._render(grey.contiguous(), params)  # each of the three channels resampled
    assert once.shape == per_channel.shape == (6, 3, 24, 24) and once.is_contiguous()
    torch.testing.assert_close(once, per_channel, rtol=0, atol=1e-5)
    assert torch.equal(staged.apply(grey, params, grey=True), once)  # as the dataset calls it, knowing
    assert torch.equal(staged.apply(grey, params, grey=False), per_channel)
    # one value off in one channel: not grey; a coloured background for the corners: every channel resampled
    tinted = grey.clone()
    tinted[2, 5, 5, 1] ^= 1
    assert not channels_equal(tinted) and not channels_equal(tinted[..., :2])
    coloured = RotateCropResize(24, MEAN, STD, [7, 0, 7], interpolation, 20.0, (0.5, 1.0), (0.8, 1.25), 0.5, 0.5)
    assert torch.equal(coloured.apply(grey, params), coloured._render(grey.contiguous(), params))
    with pytest.raises(LeafnetError, match=r"cannot render 1 channel\(s\) on background \[7.0, 0.0, 7.0\]"):
        coloured._render(plane, params)


def test_staged_crops_are_whole_pixels_inside_the_image_with_timms_area_and_ratio():
    boxes = [crop_pixels(100, 80, (0.3, 0.9), (0.8, 1.25), Draws(torch.Generator().manual_seed(i))) for i in range(300)]
    for left, top, w, h in boxes:
        assert all(isinstance(v, int) for v in (left, top, w, h))
        assert left >= 0 and left + w <= 100 and top >= 0 and top + h <= 80
    shares = np.array([w * h / 8000 for _, _, w, h in boxes])
    ratios = np.array([w / h for _, _, w, h in boxes])
    assert shares.min() >= 0.28 and shares.max() <= 0.92 and 0.55 < shares.mean() < 0.65
    assert ratios.min() >= 0.77 and ratios.max() <= 1.3
    # never fits: timm's fallback, the centred crop clamped to the ratio range (the whole image when within it)
    assert crop_pixels(10, 10, (2.0, 3.0), (1.0, 1.0), Draws(None)) == (0, 0, 10, 10)
    assert crop_pixels(20, 10, (2.0, 3.0), (0.8, 1.25), Draws(None)) == (4, 0, 12, 10)
    assert crop_pixels(10, 20, (2.0, 3.0), (0.8, 1.25), Draws(None)) == (0, 4, 10, 12)
    nearest = RotateCropResize(8, MEAN, STD, [0, 0, 0], "nearest", 10.0, (0.5, 1.0), (0.8, 1.25), 0.5)
    image = torch.randint(0, 256, (30, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert nearest(image, torch.Generator().manual_seed(1)).shape == (3, 8, 8)  # the per-crop path, unfiltered
    with pytest.raises(
        LeafnetError, match="interpolation must be one of bilinear, bicubic, nearest, lanczos, got 'cubic'"
    ):
        RotateCropResize(16, MEAN, STD, [0, 0, 0], "cubic")


@pytest.mark.slow
def test_loader_workers_fill_one_cache_that_the_main_process_reads(prepared_synthetic):
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=32)
    dataset = ManifestDataset(prepared_synthetic, "train", train_transform(spec))
    assert dataset.cache_in_memory(64) and int(dataset.cache.filled.sum()) == 1  # only the shape-giving image
    loader = build_loader(dataset, LoaderConfig(batch_size=16, workers=2), train=True)
    first = torch.cat([images for images, _ in loader])
    drawn = [index for index, _ in loader.sampler][: len(first)]  # the epoch's order, less the dropped last batch
    assert bool(dataset.cache.filled[drawn].all())  # filled by the workers, seen here
    second = torch.cat([images for images, _ in loader])  # the same epoch again, now from memory
    assert torch.equal(first, second)


def test_a_split_over_budget_is_decoded_per_item_and_says_so(prepared_synthetic, caplog):
    spec = PreprocessSpec.from_prepared(prepared_synthetic)
    dataset = ManifestDataset(prepared_synthetic, "train", eval_transform(spec))
    with caplog.at_level(logging.INFO):
        assert not dataset.cache_in_memory(0.01)
    assert dataset.cache is None and "train split: not cached in memory" in caplog.text
    assert dataset[0][0].shape == (3, spec.input_size, spec.input_size)


def test_an_image_of_another_shape_is_never_stored():
    cache = DecodedCache.allocate(3, torch.zeros(4, 4, 3, dtype=torch.uint8), budget_mb=1)
    odd = torch.ones(5, 4, 3, dtype=torch.uint8)
    assert torch.equal(cache.get(1, lambda: odd), odd) and not cache.filled[1]
    fitting = torch.full((4, 4, 3), 7, dtype=torch.uint8)
    assert torch.equal(cache.get(2, lambda: fitting), fitting) and cache.filled[2]
    assert torch.equal(cache.get(2, lambda: pytest.fail("read again")), fitting)


def test_the_implementation_follows_the_options_and_contradictions_are_one_line():
    assert augment_implementation(AugmentConfig()) == "supersampled"  # PIL's bilinear filter, the default spec's
    assert augment_implementation(AugmentConfig(implementation="auto"), "bicubic") == "staged"
    assert augment_implementation(AugmentConfig(rotation_interpolation="nearest")) == "staged"  # measured with staged
    assert augment_implementation(AugmentConfig(implementation="staged")) == "staged"
    assert augment_implementation(AugmentConfig(implementation="warp")) == "warp"
    assert augment_implementation(AugmentConfig(implementation="auto", re_prob=0.25)) == "timm"
    assert augment_implementation(AugmentConfig(auto_augment="rand-m9-mstd0.5")) == "timm"
    assert augment_implementation(AugmentConfig(implementation="timm")) == "timm"
    with pytest.raises(LeafnetError, match="implementation=warp cannot apply color_jitter"):
        augment_implementation(AugmentConfig(implementation="warp", color_jitter=0.4))
    with pytest.raises(LeafnetError, match="implementation=staged cannot apply re_prob"):
        augment_implementation(AugmentConfig(implementation="staged", re_prob=0.25))
    with pytest.raises(LeafnetError, match="implementation=supersampled cannot apply auto_augment"):
        augment_implementation(AugmentConfig(implementation="supersampled", auto_augment="rand-m9-mstd0.5"))
    with pytest.raises(LeafnetError, match="must be one of auto, warp, staged, supersampled, timm, got 'fast'"):
        augment_implementation(AugmentConfig(implementation="fast"))
    with pytest.raises(LeafnetError, match="rotation_interpolation must be one of bilinear, nearest, got 'bicubic'"):
        augment_implementation(AugmentConfig(rotation_interpolation="bicubic"))
    with pytest.raises(LeafnetError, match=r"implementation=warp .* cannot take rotation_interpolation=nearest"):
        augment_implementation(AugmentConfig(implementation="warp", rotation_interpolation="nearest"))
    spec = PreprocessSpec(input_size=16)
    for rotation in ("bilinear", "nearest"):  # timm's path rotates with torchvision, as asked
        timm_path = train_transform(spec, AugmentConfig(implementation="timm", rotation_interpolation=rotation))
        assert timm_path.item.rest.transforms[0].interpolation == tvf.InterpolationMode(rotation)
    with pytest.raises(LeafnetError, match="rotation interpolation must be one of bilinear, nearest, got 'area'"):
        RotateCropResize(16, MEAN, STD, [0, 0, 0], rotation_interpolation="area")


def test_the_warp_reads_a_source_just_large_enough_and_workers_follow_the_cache():
    assert working_side(56, 0.7) == math.ceil(56 / math.sqrt(0.7)) == 67
    assert working_side(224, 1.0) == 224
    assert auto_workers(cached=True, local_processes=1, cores=16) == 1
    assert auto_workers(cached=True, local_processes=1, cores=16, in_process=True) == 0
    assert auto_workers(cached=False, local_processes=1, cores=2) == 2
    assert auto_workers(cached=False, local_processes=2, cores=16) == 4
    assert auto_workers(cached=False, local_processes=1, cores=64) == 8


@pytest.mark.parametrize("height, width", [(128, 128), (96, 160), (33, 17)])
def test_the_rotation_grid_is_affine_grids(height, width):
    thetas = rotation_matrices(width, height, torch.tensor([0.0, 13.5, -90.0, 179.0]))
    expected = torch.nn.functional.affine_grid(thetas, [4, 3, height, width], align_corners=False)
    assert torch.allclose(sampling_grid(thetas, height, width), expected, atol=1e-6)
