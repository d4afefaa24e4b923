"""Training augmentation in timm's order, on uint8 tensors a batch at a time.

timm's pipeline (`augment.implementation=timm`) rotates the whole prepared image, takes an integer
random-resized crop, resizes it to the output with antialiasing, then flips: four PIL resamplings per
sample per epoch in a loader process, which on a 2-core machine takes a third of the cores from the steps.
This does the same steps in the same order with torch: one `grid_sample` rotates the whole batch at the
prepared size (uncovered corners take the background), each sample's crop is resized by torch's
antialiased interpolation (the filter PIL's resize uses), and the flips are index reversals. It costs
a few percent of a step, so on a CPU it runs in the training process (`data.workers=-1`; on a GPU in a loader worker).

Unlike the one-resampling warp (`leafnet.data.warp`), nothing is resampled at the output's scale before
the antialiased resize: the images are timm's up to rounding (PIL rounds to uint8 after each step).
The parameters are drawn as timm draws them (the angle uniform in ±rotation_deg; the crop's area share
uniform in `scale`, its log aspect ratio uniform in `ratio`, whole-pixel sizes and offsets, ten tries,
else a centred crop within `ratio`), each sample's from its own generator, which the dataset seeds with the sample's
seed.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import grid_sample, interpolate

from leafnet.data.batch_augment import CROP_TRIES, BatchAugment, Draws, channels_equal
from leafnet.errors import LeafnetError

ROTATION_MODES = ("bilinear", "nearest")  # grid_sample's names, as torchvision's RandomRotation's

# interpolate's modes for a PreprocessSpec's interpolation (it has no lanczos; bicubic is the nearest)
# (nearest-exact samples pixel centres, as PIL's NEAREST does; torch's "nearest" is half a pixel off)
RESIZE_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact", "lanczos": "bicubic"}


def crop_pixels(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], draws: Draws
) -> tuple[int, int, int, int]:
    """(left, top, width, height) in whole pixels, as timm's RandomResizedCrop samples them, including its
    fallback after ten misses: a centred crop, clamped to `ratio` when the image's own aspect is outside it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target = area * draws.uniform(*scale)
        aspect = math.exp(draws.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        x_unit, y_unit = draws.uniform(0.0, 1.0), draws.uniform(0.0, 1.0)
        if 0 < w <= width and 0 < h <= height:
            return int(x_unit * (width - w + 1)), int(y_unit * (height - h + 1)), w, h
    w, h = width, height
    if width / height < min(ratio):
        h = round(w / min(ratio))
    elif width / height > max(ratio):
        w = round(h * max(ratio))
    return (width - w) // 2, (height - h) // 2, w, h


class RotateCropResize(BatchAugment):
    """uint8 HWC image tensor -> normalised float CHW tensor of `output_size`: rotated whole, cropped,
    resized with antialiasing and flipped, as timm's pipeline does it.

    `rotation_interpolation`: the rotation's resampling, bilinear (timm's path's) or nearest (half its cost)."""

    def __init__(self, *args, rotation_interpolation: str = "bilinear", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if rotation_interpolation not in ROTATION_MODES:
            raise LeafnetError(
                f"rotation interpolation must be one of {', '.join(ROTATION_MODES)}, got {rotation_interpolation!r}"
            )
        self.rotation_mode = rotation_interpolation
        self.grey_background = bool((self.background == self.background[0]).all())

    @property
    def resize_mode(self) -> str:
        return RESIZE_MODES[self.interpolation]  # the rotation's is its own (rotation_interpolation), as timm's path

    def sample(self, width: int, height: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample's (angle, left, top, width, height, hflip, vflip), every number from `generator`."""
        draws = Draws(generator)
        angle = draws.uniform(-self.rotation_deg, self.rotation_deg)
        left, top, w, h = crop_pixels(width, height, self.scale, self.ratio, draws)
        hflip = draws.uniform(0.0, 1.0) < self.hflip
        vflip = draws.uniform(0.0, 1.0) < self.vflip
        return torch.tensor([angle, left, top, w, h, float(hflip), float(vflip)], dtype=torch.float64)

    def apply(self, images: torch.Tensor, params: torch.Tensor, grey: bool | None = None) -> torch.Tensor:
        """uint8 NHWC images of one size and a `sample`d row each -> normalised float NCHW.

        A grey batch (every pixel's channels equal, as in silhouettes and scans) on a grey background is
        resampled as one plane, which normalising then spreads over the channels: each channel's numbers are
        the ones its own resampling would give, for a third of the resampling's work. `grey` says whether the
        batch is grey when the caller knows it (the dataset remembers each image's); None looks."""
        if grey is None:
            grey = channels_equal(images)
        return self._render(images[..., :1] if grey and self.grey_background else images, params)

    def _shifted(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC planes (the image's three channels, or one plane standing for three equal ones, only on a
        grey background, whose one value then fills every channel's uncovered pixels) -> float NCHW shifted so
        the background is 0: grid_sample's zero padding then fills the rotated corners with it."""
        if not (images.shape[-1] == 3 or (images.shape[-1] == 1 and self.grey_background)):
            raise LeafnetError(
                f"cannot render {images.shape[-1]} channel(s) on background {self.background.flatten().tolist()}"
            )
        source = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        return source.sub_(self.background[: source.shape[1]])

    def _render(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """`apply` on uint8 NHWC planes (`_shifted`'s)."""
        source = self._shifted(images)
        height, width = source.shape[2:]
        angles = params[:, 0]
        if angles.any():
            grid = sampling_grid(rotation_matrices(width, height, angles), height, width)
            source = grid_sample(source, grid, mode=self.rotation_mode, padding_mode="zeros", align_corners=False)
        boxes, hflip, vflip = params[:, 1:5].round().long(), params[:, 5].bool(), params[:, 6].bool()
        resize = self._resize_bilinear if self.resize_mode == "bilinear" else self._resize_each
        out = resize(source, boxes, hflip, vflip)
        background = self.background[: out.shape[1]]
        if self.resize_mode == "bicubic":  # bicubic overshoots; PIL clamps to the pixel range, so does this
            out = torch.maximum(torch.minimum(out, 255.0 - background), -background)
        return out * self.gain + self.offset  # (a plane broadcasts over the channels' gains and offsets)

    def _resize_bilinear(self, source: torch.Tensor, boxes: torch.Tensor, hflip, vflip) -> torch.Tensor:
        """Every sample's crop resized with antialiasing as two batched matrix products: the weights are PIL's
        (and torch's antialiased interpolate's) triangle filter over each crop's rows and columns, zero
        outside the crop; a flip is the weights' output order reversed."""
        count, channels, height, width = source.shape
        left, top, w, h = boxes.unbind(1)
        rows = resize_weights(top, h, self.output_size, height)  # (N, out, height)
        columns = resize_weights(left, w, self.output_size, width)  # (N, out, width)
        rows[vflip] = rows[vflip].flip(1)
        columns[hflip] = columns[hflip].flip(1)
        narrowed = torch.matmul(source.view(count, channels * height, width), columns.transpose(1, 2))
        return torch.matmul(rows.unsqueeze(1), narrowed.view(count, channels, height, self.output_size))

    def _resize_each(self, source: torch.Tensor, boxes: torch.Tensor, hflip, vflip) -> torch.Tensor:
        """The other filters: torch's interpolate per crop (antialiased but for nearest), then the flips."""
        size = (self.output_size, self.output_size)
        options = {} if self.resize_mode == "nearest-exact" else {"align_corners": False, "antialias": True}
        out = source.new_empty((source.shape[0], source.shape[1], *size))
        for i, (left, top, w, h) in enumerate(boxes.tolist()):
            crop = source[i : i + 1, :, top : top + h, left : left + w]
            out[i] = interpolate(crop, size=size, mode=self.resize_mode, **options)[0]
        for flipped, dim in ((hflip, 3), (vflip, 2)):
            if flipped.any():
                out[flipped] = out[flipped].flip(dim)
        return out


def sampling_grid(thetas: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`affine_grid(thetas, (N, C, height, width), align_corners=False)`, as broadcast sums over the pixel centres'
    x and y written straight into a contiguous grid (which grid_sample reads faster than a strided view), where
    affine_grid multiplies a (pixels x 3) grid by each matrix: the same numbers up to float rounding, in less time."""
    xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    grid = torch.empty(thetas.shape[0], height, width, 2)
    for k in range(2):  # the source's x, then y: a x + (b y + c), one pass over the grid
        y_term = thetas[:, k, 1, None, None] * ys[:, None] + thetas[:, k, 2, None, None]  # (N, height, 1)
        torch.add(thetas[:, k, 0, None, None] * xs, y_term, out=grid[..., k])
    return grid


def rotation_matrices(width: int, height: int, angles_deg: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) `affine_grid` matrices (output -> source, [-1, 1], align_corners=False) turning a width x height
    image about its centre by each angle, as torchvision's rotate turns it (counter-clockwise on screen)."""
    turns = rotations(width, height, angles_deg)
    return torch.cat([turns, turns.new_zeros(turns.shape[0], 2, 1)], 2).float()


def rotations(width: int, height: int, angles_deg: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) float64: `rotation_matrices`' linear part, in [-1, 1] coordinates (hence the aspect terms)."""
    radians = torch.deg2rad(angles_deg.double())
    cos, sin = radians.cos(), radians.sin()
    rows = [torch.stack([cos, -sin * height / width], 1), torch.stack([sin * width / height, cos], 1)]
    return torch.stack(rows, 1)


def resize_weights(starts: torch.Tensor, lengths: torch.Tensor, out_size: int, in_size: int) -> torch.Tensor:
    """(N, out_size, in_size): the weights resizing each window [start, start + length) of a line of `in_size`
    pixels to `out_size` with PIL's antialiased bilinear filter (a triangle as wide as the scale when shrinking,
    plain bilinear when enlarging), each row normalised over the window as PIL does at its edges."""
    starts = starts.float()[:, None, None]
    lengths = lengths.float()[:, None, None]
    scale = lengths / out_size
    centres = starts + (torch.arange(out_size, dtype=torch.float32)[None, :, None] + 0.5) * scale
    pixels = torch.arange(in_size, dtype=torch.float32)[None, None, :] + 0.5
    weights = (1 - (pixels - centres).abs_().div_(scale.clamp(min=1.0))).clamp_(min=0)
    weights.mul_((pixels > starts) & (pixels < starts + lengths))
    return weights.div_(weights.sum(-1, keepdim=True))
