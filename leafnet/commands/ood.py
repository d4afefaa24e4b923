"""Generate out-of-distribution images: `leafnet ood [output=data/ood] [per_family=60] [leaves=DATA]`.

Writes `<output>/<family>/<name>.png` for each family of leafnet/data/ood.py (figures, glyphs, blobs,
textures, noise, scenes, and leaves made untrustworthy: heavy crops, inversions, extreme blur, made from the
test split of the prepared data at `leaves`). The same set export measures unknown detection on; try a model
on it with `leafnet predict exports/leafnet data/ood` (docs/calibration.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leafnet.config import load_config
from leafnet.data.ood import LEAF_FAMILIES, OOD_FAMILIES, generate_ood, leaves_of, write_ood


@dataclass
class OodConfig:
    output: str = "data/ood"  # where the families' folders go
    per_family: int = 60  # images per family
    seed: int = 0  # the set is a pure function of this seed, the leaves and the generator's code
    # a prepared data root whose test split the leaf families are made from; null: those families left out
    leaves: str | None = "data/processed/synthetic"
    families: list[str] = field(default_factory=lambda: list(OOD_FAMILIES))  # which families to write


def main(argv: list[str]) -> None:
    config = load_config(OodConfig, argv)
    families = list(config.families)
    leaves = leaves_of(Path(config.leaves)) if config.leaves else []
    if not leaves:
        families = [name for name in families if name not in LEAF_FAMILIES]
    images = generate_ood(config.per_family, config.seed, leaves, families)
    write_ood(images, Path(config.output))
    counts = Counter(item.family for item in images)
    print(f"ood: {len(images)} images -> {config.output}: " + ", ".join(f"{n} {c}" for n, c in counts.items()))


CONFIG = OodConfig  # the options and their defaults (`leafnet ood --help` lists them)
