"""A Dataset over a prepared directory's manifest: one split, labels indexed by classes.json."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from leafnet.data.split import SPLITS
from leafnet.errors import LeafnetError


def read_classes(root: str | Path) -> list[str]:
    """Class names in index order, from classes.json."""
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise LeafnetError(f"{path} not found: is {root} a prepared data directory? Run scripts/prepare_data.py")
    mapping = json.loads(path.read_text())
    return [mapping[str(i)] for i in range(len(mapping))]


class ManifestDataset(Dataset):
    """Images of one split of a prepared directory, as (transformed image, class index)."""

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        if split not in SPLITS:
            raise LeafnetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.classes = read_classes(self.root)
        index = {name: i for i, name in enumerate(self.classes)}
        with open(self.root / "manifest.csv", newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if row["split"] == split]
        self.samples = [(self.root / row["path"], index[row["label"]]) for row in rows]
        self.split = split
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as image:
            image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), label
