"""Train and eval transforms, built with timm's transform factory from a `PreprocessSpec`.

The spec is the single description of eval preprocessing: checkpoints, exports and the serving
handler carry it (as preprocess.json), so what the server does to an image is what evaluation did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from timm.data import create_transform
from torchvision import transforms as tv_transforms

from leafnet.data.prepared import PreparedData
from leafnet.errors import LeafnetError

# The interpolations a PreprocessSpec may name: timm's names, each mapped to PIL's by the handler
# (leafnet/serving/preprocess.py INTERPOLATION; a test keeps the two equal).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")


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


def eval_transform(spec: PreprocessSpec):
    return create_transform(
        input_size=spec.input_size,
        is_training=False,
        interpolation=spec.interpolation,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        crop_pct=spec.crop_pct,
    )


def train_transform(spec: PreprocessSpec, augment: AugmentConfig | None = None):
    augment = augment or AugmentConfig()
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
    bilinear = tv_transforms.InterpolationMode.BILINEAR
    rotate = tv_transforms.RandomRotation(augment.rotation_deg, interpolation=bilinear, fill=spec.background)
    return tv_transforms.Compose([rotate, timm_part])
