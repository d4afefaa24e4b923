"""Train and eval transforms from a `PreprocessSpec`, each an `ImagePipeline`: a deterministic PIL
prefix, whose uint8 output a dataset may decode once and cache (`leafnet.data.cache`), and a per-item step.

The spec is the single description of eval preprocessing: checkpoints, exports and the serving
handler carry it (as preprocess.json), so what the server does to an image is what evaluation did.
Eval is timm's transform factory's, split before its to-tensor step, so a cached image gives exactly the
tensor an uncached one does. Training takes timm's random geometry (rotate the whole image, a
random-resized crop resized with antialiasing, flips) either through timm's own PIL pipeline per item in
loader workers (`augment.implementation=timm`) or as torch ops on a batch in the training process:
`staged` (`leafnet.data.staged`) does timm's steps one after the other, `supersampled`
(`leafnet.data.supersampled`) samples them at once on a grid finer than the output and filters it down with
PIL's bilinear filter, in half the time at the same held-out accuracy. The default, `auto`, picks
supersampled for the bilinear filter, staged for another, and timm's pipeline when an option only timm's
factory applies is set. `warp` (`leafnet.data.warp`) samples the three straight at the output size from a
reduced image: the cheapest, but its models score 2 to 3 points lower on a large held-out set
(docs/training.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import MaybeToTensor
from torchvision import transforms as tv_transforms

from leafnet.data.prepared import PreparedData
from leafnet.data.staged import ROTATION_MODES, RotateCropResize
from leafnet.data.supersampled import SupersampledWarp, require_bilinear
from leafnet.data.warp import AffineWarp, working_side
from leafnet.errors import LeafnetError


@dataclass
class PreprocessSpec:
    """Everything between an uploaded image and the model's input tensor, in the order it is applied:
    decode (alpha over `background`), fit to a `fit_size` square as prepare did (`fit_mode` pad
    letterboxes with `background`, shorter centre-crops; None when the images were not prepared by
    leafnet), then timm's eval transform (resize to input_size / crop_pct, centre-crop `input_size`,
    normalise with mean/std). Prepare records the data's part (stats.json), training adds the model's
    (input_size; with a pretrained backbone its mean, std, interpolation and crop_pct, leafnet.pretrained),
    the checkpoint carries it and export writes it unchanged as preprocess.json, which is all the
    serving handler reads."""

    input_size: int = 128
    crop_pct: float = 1.0  # resize the shorter side to input_size / crop_pct, then centre-crop
    interpolation: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    background: list[int] = field(default_factory=lambda: [0, 0, 0])  # behind alpha and letterboxing
    fit_size: int | None = None
    fit_mode: str | None = None

    @classmethod
    def from_prepared(cls, root: str | Path, input_size: int | None = None, **overrides) -> PreprocessSpec:
        """The data's part from a prepared directory's stats.json (the train split's mean/std, prepare's
        image size, resize mode and background), the model's part from the arguments."""
        data = PreparedData(root)
        stats = data.stats()
        # A constant channel (std 0) would divide by zero; 1.0 leaves it centred but unscaled.
        std = [s if s > 1e-6 else 1.0 for s in stats["std"]]
        data_part = {
            "mean": stats["mean"],
            "std": std,
            "background": data.background(),
            "fit_size": stats.get("image_size"),
            "fit_mode": stats.get("resize"),
        }
        return cls(input_size=input_size or stats["image_size"], **{**data_part, **overrides})

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, data_root: str | Path) -> PreprocessSpec:
        """A checkpoint's spec. Checkpoints written before the spec held the fit step and the background lack
        both: they come from the data the run was trained on (`data_root`), as export always took them."""
        stored = checkpoint["preprocess"]
        spec = cls.from_dict(stored)
        if "fit_mode" not in stored and PreparedData(data_root).is_prepared():
            data = cls.from_prepared(data_root)
            spec = replace(spec, fit_size=data.fit_size, fit_mode=data.fit_mode, background=data.background)
        return spec

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessSpec:
        """A spec as checkpoints and preprocess.json store it; keys a newer leafnet added take their defaults."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise LeafnetError(f"unknown preprocessing keys {unknown}: written by a newer leafnet?")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AugmentConfig:
    rotation_deg: float = 20.0  # silhouettes come at any angle; timm's factory has no plain rotation
    scale: tuple[float, float] = (0.7, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (0.9, 1.1)  # near 1: the aspect ratio of a leaf is a species trait
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip
    color_jitter: float = 0.0  # strength of brightness/contrast/saturation jitter; 0 = off
    auto_augment: str | None = None  # e.g. rand-m9-mstd0.5 for photographs
    re_prob: float = 0.0  # random erasing
    # the rotation's resampling (staged, supersampled and timm): bilinear, or nearest (with staged about 8% less wall
    # time in the demo run, held-out top-1 0.5 points lower at the median of three seeds; docs/training.md); the warp
    # takes neither
    rotation_interpolation: str = "bilinear"
    # auto = supersampled (staged for an interpolation or rotation_interpolation other than bilinear) unless an option
    # above needs timm's factory, then timm; staged = timm's steps as torch ops on a batch in the training process (a
    # grey batch resampled as one plane), a fraction of timm's cost at its held-out top-1; supersampled = the same
    # draws sampled at once on a grid a few times finer than the output (twice for 128 -> 56 px), then PIL's filter
    # down to it: half staged's cost, the same held-out top-1; timm = timm's PIL pipeline per item in loader workers
    # (the reference); warp = the three as one resampling at the output size, cheapest but 2-3 points lower
    # (docs/training.md measures all five)
    implementation: str = "auto"


AUGMENT_IMPLEMENTATIONS = ("auto", "warp", "staged", "supersampled", "timm")
# torch ops on a batch, which cannot apply the options only timm's factory has
BATCH_IMPLEMENTATIONS = ("warp", "staged", "supersampled")
PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def uint8_hwc(image: Image.Image) -> torch.Tensor:
    """A decoded RGB image as the uint8 HWC tensor that caches hold and per-item steps read."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())


def pil_image(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.numpy(), "RGB")


class ImagePipeline:
    """`prefix` (PIL -> PIL, deterministic: its output may be cached) then `item` (the prefix's output as
    a uint8 HWC tensor -> the model's input). Called on a PIL image, it runs both."""

    def __init__(
        self, prefix: Callable[[Image.Image], Image.Image] | None, item: Callable[[torch.Tensor], torch.Tensor]
    ):
        self.prefix, self.item = prefix, item

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return uint8_hwc(self.prefix(image) if self.prefix is not None else image)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.item(self.prepare(image))


class _ToTensorThen:
    """uint8 HWC tensor -> float CHW in [0, 1] (as torchvision's to_tensor divides) -> `rest`."""

    def __init__(self, rest: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.rest = rest

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.rest(image.permute(2, 0, 1).contiguous().to(dtype=torch.get_default_dtype()).div(255))

    @property
    def batchable(self) -> bool:
        """True when `rest` is only normalisation (timm's eval transform), which takes a batch as it takes one image."""
        steps = self.rest.transforms if isinstance(self.rest, tv_transforms.Compose) else [self.rest]
        return all(isinstance(step, tv_transforms.Normalize) for step in steps)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images -> what `__call__` gives for each, stacked: the same element-wise operations in one
        call per batch instead of one per image (a cached validation split is then read in a few milliseconds)."""
        return self.rest(images.permute(0, 3, 1, 2).contiguous().to(dtype=torch.get_default_dtype()).div(255))


class _PilThen:
    """uint8 HWC tensor -> PIL image -> `rest` (a PIL pipeline that ends with its own to-tensor)."""

    def __init__(self, rest: Callable[[Image.Image], torch.Tensor]) -> None:
        self.rest = rest

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.rest(pil_image(image))


class _Shrink:
    """Resizes (antialiased) so the shorter side is at most `side`; smaller images pass unchanged."""

    def __init__(self, side: int, interpolation: str) -> None:
        self.side, self.resample = side, PIL_RESAMPLE[interpolation]

    def __call__(self, image: Image.Image) -> Image.Image:
        shorter = min(image.size)
        if shorter <= self.side:
            return image
        factor = self.side / shorter
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return image.resize(size, self.resample)


def eval_transform(spec: PreprocessSpec) -> ImagePipeline:
    timm_eval = create_transform(
        input_size=spec.input_size,
        is_training=False,
        interpolation=spec.interpolation,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        crop_pct=spec.crop_pct,
    )
    steps = list(timm_eval.transforms)
    split = next(i for i, step in enumerate(steps) if isinstance(step, MaybeToTensor | tv_transforms.ToTensor))
    return ImagePipeline(tv_transforms.Compose(steps[:split]), _ToTensorThen(tv_transforms.Compose(steps[split + 1 :])))


def augment_implementation(augment: AugmentConfig, interpolation: str = "bilinear") -> str:
    """timm, staged, supersampled or warp: what `train_transform` builds for these options and the spec's
    `interpolation` (auto supersamples only what was measured: the bilinear filter and a bilinear rotation)."""
    if augment.implementation not in AUGMENT_IMPLEMENTATIONS:
        raise LeafnetError(
            f"data.augment.implementation must be one of {', '.join(AUGMENT_IMPLEMENTATIONS)}, "
            f"got {augment.implementation!r}"
        )
    if augment.rotation_interpolation not in ROTATION_MODES:
        raise LeafnetError(
            f"data.augment.rotation_interpolation must be one of {', '.join(ROTATION_MODES)}, "
            f"got {augment.rotation_interpolation!r}"
        )
    if augment.implementation == "warp" and augment.rotation_interpolation != "bilinear":
        raise LeafnetError(
            "data.augment.implementation=warp resamples rotation, crop and flip at once with the model's "
            f"interpolation; it cannot take rotation_interpolation={augment.rotation_interpolation}"
        )
    if augment.implementation == "supersampled":
        require_bilinear(interpolation)
    timm_only = {
        "color_jitter": augment.color_jitter,
        "auto_augment": augment.auto_augment,
        "re_prob": augment.re_prob,
    }
    needs_timm = [name for name, value in timm_only.items() if value]
    if augment.implementation in BATCH_IMPLEMENTATIONS and needs_timm:
        culprits = ", ".join(needs_timm)
        raise LeafnetError(
            f"data.augment.implementation={augment.implementation} cannot apply {culprits}; use auto or timm"
        )
    if augment.implementation == "auto":
        if needs_timm:
            return "timm"
        # the supersampled warp as measured: PIL's bilinear filter after a bilinear rotation; else timm's steps
        measured = interpolation == "bilinear" and augment.rotation_interpolation == "bilinear"
        return "supersampled" if measured else "staged"
    return augment.implementation


def augments(augment: AugmentConfig) -> bool:
    """False when every option is off: training then sees exactly what evaluation sees."""
    geometry = augment.rotation_deg > 0 or augment.hflip > 0 or augment.vflip > 0
    crop = tuple(augment.scale) != (1.0, 1.0) or tuple(augment.ratio) != (1.0, 1.0)
    return geometry or crop or bool(augment.color_jitter or augment.auto_augment or augment.re_prob)


def train_transform(spec: PreprocessSpec, augment: AugmentConfig | None = None) -> ImagePipeline:
    augment = augment or AugmentConfig()
    implementation = augment_implementation(augment, spec.interpolation)
    if not augments(augment) and implementation in BATCH_IMPLEMENTATIONS:
        return eval_transform(spec)  # nothing random: the cheapest pipeline, and the one served
    geometry = (
        spec.input_size,
        spec.mean,
        spec.std,
        spec.background,
        spec.interpolation,
        augment.rotation_deg,
        tuple(augment.scale),
        tuple(augment.ratio),
        augment.hflip,
        augment.vflip,
    )
    if implementation in ("staged", "supersampled"):
        render = RotateCropResize if implementation == "staged" else SupersampledWarp
        return ImagePipeline(None, render(*geometry, rotation_interpolation=augment.rotation_interpolation))
    if implementation == "warp":
        shrink = _Shrink(working_side(spec.input_size, augment.scale[0]), spec.interpolation)
        return ImagePipeline(shrink, AffineWarp(*geometry))
    return ImagePipeline(None, _PilThen(_timm_train(spec, augment)))


def _timm_train(spec: PreprocessSpec, augment: AugmentConfig):
    timm_part = create_transform(
        input_size=spec.input_size,
        is_training=True,
        scale=tuple(augment.scale),
        ratio=tuple(augment.ratio),
        hflip=augment.hflip,
        vflip=augment.vflip,
        color_jitter=augment.color_jitter,
        auto_augment=augment.auto_augment,
        interpolation=spec.interpolation,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        re_prob=augment.re_prob,
    )
    if augment.rotation_deg <= 0:
        return timm_part
    mode = tv_transforms.InterpolationMode(augment.rotation_interpolation)
    rotate = tv_transforms.RandomRotation(augment.rotation_deg, interpolation=mode, fill=spec.background)
    return tv_transforms.Compose([rotate, timm_part])
