"""Pretrained weights from a local file (never a download) and the preprocessing that goes with them.

The files people have: a timm / Hugging Face `model.safetensors` or `pytorch_model.bin`, a `.pth` or
`.pth.tar` (a bare state dict, or one under `state_dict_ema`, `model_ema`, `state_dict` or `model`, taken in
that order as timm does, or `model_state_dict`; with or without DDP's `module.` or torch.compile's
`_orig_mod.` prefix), and a leafnet checkpoint (its deployed `model`). The file becomes a plain state dict,
then loads with the semantics of timm's `load_pretrained`: the architecture's own checkpoint filter (timm's
key remapping and position-embedding resampling), the stem convolution adapted to another channel count
(`timm.models.adapt_input_conv`), and a classifier of another shape left at its fresh initialisation.
Anything else that does not fit fails in one line unless `model.pretrained_strict=false`.

The preprocessing a backbone was trained with (mean, std, interpolation, crop_pct) comes, in this order,
from a leafnet checkpoint's own spec, a `config.json` beside the weights file (the `pretrained_cfg` timm
writes to the Hugging Face hub) or timm's pretrained config of the architecture (code, not a download).
docs/finetune.md describes both for users.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv, clean_state_dict
from torch import nn

from leafnet.checkpoint import FORMAT, safe_torch_load
from leafnet.errors import LeafnetError

logger = logging.getLogger(__name__)

CONFIG_BESIDE = "config.json"  # what timm's push_to_hf_hub writes beside model.safetensors
# Where a training checkpoint keeps its weights, in the order timm's load_state_dict looks (EMA first), and
# the name many hand-written training loops use.
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict")
NORMALIZE_CHOICES = ("auto", "pretrained", "data")
_EXAMPLES = 3  # names quoted per kind in a one-line message


@dataclass
class WeightsFile:
    """A weights file read into a plain state dict, and what it was."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    layout: str  # e.g. "safetensors", "state_dict_ema of a torch file", "leafnet checkpoint"
    preprocess: dict | None = None  # a leafnet checkpoint's spec


@dataclass
class LoadReport:
    """Which of the model's tensors came from the file: the lists `load_pretrained` logs."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in both, another shape: left at their initialisation
    missing: list[str] = field(default_factory=list)  # the model's, absent from the file
    unexpected: list[str] = field(default_factory=list)  # the file's, absent from the model
    adapted: list[str] = field(default_factory=list)  # stem convolutions converted to the model's channels
    problems: list[str] = field(default_factory=list)  # of the above, those outside the classifier


def _is_safetensors(path: Path) -> bool:
    """safetensors files open with an 8-byte header length and a JSON header; torch's with a zip or pickle."""
    with open(path, "rb") as file:
        head = file.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _read(path: Path) -> Any:
    if not path.is_file():
        raise LeafnetError(f"model weights file not found: {path}")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:
            raise LeafnetError(f"cannot read model weights file {path} as safetensors: {error}") from None
    # timm's training checkpoints keep their argparse.Namespace of arguments beside the weights.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return safe_torch_load(path, "model weights file")


def read_weights(path: str | Path) -> WeightsFile:
    """A weights file in any layout above as a plain state dict (prefixes removed)."""
    path = Path(path)
    content = _read(path)
    layout, preprocess = "safetensors" if _is_safetensors(path) else "state dict", None
    if isinstance(content, dict) and content.get("format") == FORMAT:
        layout = f"leafnet checkpoint of {content.get('model_name')}"
        preprocess = content.get("preprocess")
        content = content.get("model")
    elif isinstance(content, dict):
        key = next((k for k in STATE_DICT_KEYS if isinstance(content.get(k), dict)), None)
        if key is not None:
            layout, content = f"{key} of a checkpoint", content[key]
    if not isinstance(content, dict) or not content or not all(torch.is_tensor(v) for v in content.values()):
        keys = sorted(content)[:5] if isinstance(content, dict) else type(content).__name__
        raise LeafnetError(f"{path} holds no state dict (found {keys}); expected tensors by parameter name")
    return WeightsFile(path, clean_state_dict(content), layout, preprocess)


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """Module names of the classifier: timm's pretrained_cfg `classifier`, and what get_classifier() holds."""
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        names += tuple(n for n, m in model.named_modules() if n and m is head)
    return names


def _is_head(key: str, classifiers: tuple[str, ...]) -> bool:
    return any(key == c or key.startswith(c + ".") for c in classifiers)


def _architecture_filter(state_dict: dict, model: nn.Module) -> dict:
    """The architecture's checkpoint filter, as timm's create_model applies it to its own weights (key
    remapping of original releases, position embeddings resampled to the model's image size). timm names it
    `checkpoint_filter_fn` in the model's module; architectures without one load their keys unchanged."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state_dict
    try:
        return filter_fn(state_dict, model)
    except Exception as error:  # a filter written for another release's layout: load the keys as they are
        logger.warning("timm's checkpoint filter for %s failed (%s); loading the keys unchanged", type(model), error)
        return state_dict


def _adapt_stem(state_dict: dict, model: nn.Module) -> list[str]:
    """Converts the stem convolution(s) of a file with another channel count (a grayscale backbone into an
    RGB model, or back) with timm's adapt_input_conv; the source channels are the file tensor's."""
    first = getattr(model, "pretrained_cfg", {}).get("first_conv") or ()
    adapted = []
    own = model.state_dict()
    for name in (first,) if isinstance(first, str) else first:
        key = f"{name}.weight"
        theirs, mine = state_dict.get(key), own.get(key)
        if theirs is None or mine is None or theirs.ndim != 4 or mine.ndim != 4 or theirs.shape == mine.shape:
            continue
        if theirs.shape[0] != mine.shape[0] or theirs.shape[2:] != mine.shape[2:]:
            continue
        try:
            state_dict[key] = adapt_input_conv(mine.shape[1], theirs, base_chans=theirs.shape[1])
        except (NotImplementedError, TypeError, ValueError, AssertionError):
            continue  # left as it is: reported as a tensor of another shape
        adapted.append(f"{key} ({theirs.shape[1]} -> {mine.shape[1]} channels)")
    return adapted


def _examples(names: list[str], describe=str) -> str:
    shown = ", ".join(describe(n) for n in names[:_EXAMPLES])
    return shown + (f", ... ({len(names) - _EXAMPLES} more)" if len(names) > _EXAMPLES else "")


def match_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[dict, LoadReport]:
    """What of `state_dict` loads into `model` (filtered, stem adapted, other shapes dropped) and the report."""
    state_dict = _architecture_filter(dict(state_dict), model)
    report = LoadReport(adapted=_adapt_stem(state_dict, model))
    own = model.state_dict()
    heads = _classifier_names(model)
    usable = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.skipped.append(key)
        else:
            usable[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state_dict]
    shapes = {k: (tuple(state_dict[k].shape), tuple(own[k].shape)) for k in report.skipped}
    # Tolerated: the classifier (another class count, or a headless backbone), and BatchNorm's step counter,
    # which older releases (torchvision's among them) do not store.
    skipped = [k for k in report.skipped if not _is_head(k, heads)]
    missing = [k for k in report.missing if not _is_head(k, heads) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in report.unexpected if not _is_head(k, heads)]
    if skipped:
        shape = lambda k: f"{k} {shapes[k][0]} in the file, {shapes[k][1]} here"  # noqa: E731
        report.problems.append(f"{len(skipped)} tensor(s) of another shape ({_examples(skipped, shape)})")
    if missing:
        report.problems.append(f"{len(missing)} missing from the file ({_examples(missing)})")
    if unexpected:
        report.problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    return usable, report


def load_pretrained(model: nn.Module, path: str | Path, strict: bool = True, name: str | None = None) -> LoadReport:
    """Loads a weights file into a timm model built for the new task; logs what loaded, what was skipped for
    its shape and what is missing. A classifier of another shape (other classes) is expected; any other
    mismatch raises LeafnetError in one line when `strict`, else is logged as a warning."""
    weights = read_weights(path)
    usable, report = match_state_dict(model, weights.state_dict)
    name = name or type(model).__name__
    if report.problems:
        detail = "; ".join(report.problems)
        if strict or not usable:
            hint = "; model.pretrained_strict=false loads what fits" if strict and usable else ""
            raise LeafnetError(f"{weights.path} does not fit this architecture ({name}): {detail}{hint}")
        logger.warning("pretrained weights %s fit %s only in part: %s", weights.path, name, detail)
    model.load_state_dict(usable, strict=False)
    total = len(model.state_dict())
    logger.info(
        "pretrained weights %s (%s): loaded %d of %d tensors of %s",
        weights.path,
        weights.layout,
        len(report.loaded),
        total,
        name,
    )
    logger.debug("loaded: %s", ", ".join(report.loaded))
    heads = _classifier_names(model)
    for what, names in (
        ("adapted to the model's input channels", report.adapted),
        ("classifier skipped for shape (re-initialised)", [k for k in report.skipped if _is_head(k, heads)]),
        ("skipped for shape (left at their initialisation)", [k for k in report.skipped if not _is_head(k, heads)]),
        ("missing from the file (left at their initialisation)", report.missing),
        ("in the file but not in the model (ignored)", report.unexpected),
    ):
        if names:
            logger.info("  %s: %s", what, ", ".join(names))
    return report


@dataclass(frozen=True)
class BackbonePreprocessing:
    """The model's part of a preprocessing spec as the backbone was trained with it, and where it came from."""

    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float
    source: str


def _architecture_cfg(name: str) -> dict | None:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know for the architecture
        return None
    return cfg.to_dict() if cfg is not None else None


def _from_values(values: dict, fallback: dict | None, source: str) -> BackbonePreprocessing:
    fallback = fallback or {}

    def pick(key: str, default):
        value = values.get(key)
        return value if value is not None else fallback.get(key, default)

    try:
        mean, std = [float(v) for v in values["mean"]], [float(v) for v in values["std"]]
        return BackbonePreprocessing(
            mean=mean,
            std=std,
            interpolation=str(pick("interpolation", "bilinear")),
            crop_pct=float(pick("crop_pct", 1.0)),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise LeafnetError(f"{source}: no usable mean/std ({error!r})") from None


def _config_beside(path: Path, name: str) -> dict | None:
    """`pretrained_cfg` of a config.json beside the weights (or the file's top level, which older exports used)."""
    beside = path.parent / CONFIG_BESIDE
    if not beside.is_file():
        return None
    try:
        content = json.loads(beside.read_text())
    except (OSError, ValueError) as error:
        raise LeafnetError(f"cannot read {beside}: {error}") from None
    if not isinstance(content, dict):
        return None
    cfg = content.get("pretrained_cfg") if isinstance(content.get("pretrained_cfg"), dict) else content
    if "mean" not in cfg or "std" not in cfg:
        return None
    architecture = content.get("architecture")
    if architecture and architecture.split(".")[0] != name.split(".")[0]:
        logger.warning("%s describes %s, model.name is %s", beside, architecture, name)
    return cfg


def _leafnet_spec(path: Path) -> dict | None:
    """A leafnet checkpoint's preprocessing spec; mmap keeps the weights on disk while the header is read."""
    if not path.is_file() or _is_safetensors(path):
        return None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file: not a leafnet checkpoint; the weights load reports it
        return None
    if isinstance(content, dict) and content.get("format") == FORMAT:
        return content.get("preprocess")
    return None


def backbone_preprocessing(name: str, pretrained: str | Path | None) -> BackbonePreprocessing:
    """Mean, std, interpolation and crop_pct the backbone was trained with: a leafnet checkpoint's spec, a
    config.json beside the weights file, else timm's pretrained config of `name` (a tag picks that
    release's, e.g. vit_base_patch16_clip_224.openai)."""
    architecture = _architecture_cfg(name)
    if pretrained:
        path = Path(pretrained)
        spec = _leafnet_spec(path)
        if spec is not None:
            return _from_values(spec, architecture, f"the leafnet checkpoint {path}")
        beside = _config_beside(path, name)
        if beside is not None:
            return _from_values(beside, architecture, str(path.parent / CONFIG_BESIDE))
    if architecture is None:
        raise LeafnetError(
            f"timm has no pretrained config for {name}: put a {CONFIG_BESIDE} with pretrained_cfg "
            "{mean, std} beside the weights, or set data.normalize=data"
        )
    return _from_values(architecture, None, f"timm's pretrained config of {name}")


def preprocess_overrides(
    name: str,
    pretrained: str | None,
    normalize: str,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> dict:
    """The model's part of the preprocessing spec for `PreprocessSpec.from_prepared`. normalize=pretrained
    takes mean, std, interpolation and crop_pct from the backbone; data keeps the train split's mean/std
    (the spec's bilinear and 1.0 otherwise); auto is pretrained when a weights file is given. An
    interpolation or crop_pct the user set wins either way."""
    if normalize not in NORMALIZE_CHOICES:
        raise LeafnetError(f"data.normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {normalize!r}")
    if normalize == "auto":
        normalize = "pretrained" if pretrained else "data"
    overrides: dict[str, Any] = {}
    if normalize == "pretrained":
        backbone = backbone_preprocessing(name, pretrained)
        overrides = {
            "mean": backbone.mean,
            "std": backbone.std,
            "interpolation": backbone.interpolation,
            "crop_pct": backbone.crop_pct,
        }
        logger.info(
            "preprocessing from %s: mean %s, std %s, %s, crop_pct %s",
            backbone.source,
            backbone.mean,
            backbone.std,
            backbone.interpolation,
            backbone.crop_pct,
        )
    if interpolation is not None:
        overrides["interpolation"] = interpolation
    if crop_pct is not None:
        overrides["crop_pct"] = crop_pct
    return overrides
