"""The drift reference: the training-side sample that served requests are compared with.

Built by export from the prepared data and stored as drift_reference.json in the export directory and
in every .mar, so a deployment carries its own reference:
- `features`: `image_stats` of a seeded sample of the train split, computed on the files prepare wrote,
  which are exactly the images the handler computes them on (decoded upload after `fit`). `pixels`
  needs the size of the raw upload, which prepared images no longer have: it is included only when
  prepare.json names the raw input and every sampled source file is still there;
- `confidence`: the model's top-1 probability on each test image (held out, unlike the train split);
- `class_counts`: images per class in the train split (stats.json's counts), the prior that predicted
  classes are compared with.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from leafnet.data.prepared import PreparedData
from leafnet.errors import LeafnetError
from leafnet.serving.answers import softmax
from leafnet.serving.image_stats import STATS_FEATURES, STATS_VERSION, image_stats

REFERENCE_FILE = "drift_reference.json"
FORMAT = 1
REQUIRED = ("format", "stats_version", "version", "features", "confidence", "classes", "class_counts")


def top1_probability(logits: np.ndarray) -> np.ndarray:
    """Softmax top-1 probability per row, as the handler reports it (its own softmax)."""
    return softmax(logits).max(axis=1)


def _upload_size(raw_root: Path | None, source: str) -> tuple[int, int] | None:
    if raw_root is None:
        return None
    try:
        with Image.open(raw_root / source) as image:  # reads the header only
            return image.size
    except (OSError, ValueError, SyntaxError):
        return None


def build_reference(
    data_root: Path,
    classes: list[str],
    background: tuple[int, int, int],
    confidence: np.ndarray,
    version: str,
    max_images: int,
    seed: int = 0,
    unknown_rate: float | None = None,
) -> dict:
    """The reference of a model trained on `data_root`; `confidence`: its top-1 probabilities on the test split;
    `unknown_rate`: the share of test images it answered `unknown` (None: a model without calibration)."""
    data = PreparedData(data_root)
    rows = data.rows("train")
    count = min(max_images, len(rows))
    chosen = sorted(np.random.default_rng(seed).choice(len(rows), size=count, replace=False).tolist())
    raw_root = data.raw_input()
    features: dict[str, list[float]] = {name: [] for name in STATS_FEATURES}
    sizes_known = raw_root is not None
    for index in chosen:
        row = rows[index]
        with Image.open(data_root / row["path"]) as image:
            rgb = image.convert("RGB")
        upload = _upload_size(raw_root, row["source"]) if sizes_known else None
        sizes_known = upload is not None
        for name, value in image_stats(rgb, upload or rgb.size, background).items():
            features[name].append(round(value, 5))
    if not sizes_known:
        features.pop("pixels")
    counts = Counter(row["label"] for row in rows)
    return {
        "format": FORMAT,
        "stats_version": STATS_VERSION,
        "version": version,
        "data": str(data_root),
        "split": "train",
        "seed": seed,
        "images": count,
        "train_images": len(rows),
        "features": features,
        "confidence": [round(float(p), 6) for p in confidence],
        "confidence_split": "test",
        "unknown_rate": unknown_rate,
        "classes": list(classes),
        "class_counts": [counts.get(name, 0) for name in classes],
    }


def load_reference(path: str | Path) -> dict:
    """A reference from drift_reference.json, an export directory holding one, or a .mar archive."""
    path = Path(path)
    fix = "run scripts/export.py (it writes exports/<name>/drift_reference.json), or pass reference=<file>"
    try:
        if path.is_dir():
            path = path / REFERENCE_FILE
        if path.suffix == ".mar" and path.is_file():
            with zipfile.ZipFile(path) as archive:
                text = archive.read(REFERENCE_FILE)
        else:
            text = path.read_bytes()
        reference = json.loads(text)
    except FileNotFoundError:
        raise LeafnetError(f"drift reference {path} not found: {fix}") from None
    except KeyError:
        raise LeafnetError(f"{path} holds no {REFERENCE_FILE}: an archive exported before drift monitoring") from None
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise LeafnetError(f"cannot read drift reference {path}: {error}") from None
    missing = [key for key in REQUIRED if not isinstance(reference, dict) or key not in reference]
    if missing:
        raise LeafnetError(f"{path} is not a drift reference (no {missing[0]!r}): {fix}")
    if reference["format"] != FORMAT:
        raise LeafnetError(f"{path} has reference format {reference['format']}; this leafnet reads {FORMAT}")
    counts = reference["class_counts"]
    if len(reference["classes"]) != len(counts) or any(not isinstance(n, int) or n < 0 for n in counts):
        raise LeafnetError(f"{path} is damaged: class_counts must be one count per class")
    return reference
