"""The true class of each input of `leafnet predict`, when it is known:

- from the folders: every input lies in a folder named like one of the model's classes (the ImageFolder
  layout prepare writes, e.g. data/processed/synthetic/test/<class>/x.png);
- from a manifest (--truth FILE): a CSV with columns path,label as prepare's manifest.csv, paths relative
  to the manifest's folder; every input must be listed in it, with one of the model's classes.
"""

from __future__ import annotations

from pathlib import Path

from leafnet.data.sources import read_csv
from leafnet.errors import LeafnetError


def truth_from_folders(paths: list[Path], classes: list[str]) -> list[str] | None:
    """Each input's folder name, when all of them are classes of the model; else None."""
    known = set(classes)
    labels = [path.parent.name for path in paths]
    return labels if labels and all(label in known for label in labels) else None


def truth_from_manifest(manifest: Path, paths: list[Path], classes: list[str]) -> list[str]:
    """Each input's label in the manifest; an input it does not list, or a label the model lacks, is an error."""
    by_path = _read_manifest(manifest)
    labels = []
    for path in paths:
        label = by_path.get(path.resolve())
        if label is None:
            raise LeafnetError(f"--truth {manifest} does not list {path}")
        labels.append(label)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise LeafnetError(f"--truth {manifest} labels images {unknown[0]!r}, which is not a class of the model")
    return labels


def _read_manifest(manifest: Path) -> dict[Path, str]:
    """{resolved image path: label}."""
    if not manifest.is_file():
        raise LeafnetError(f"--truth {manifest} not found")
    return {(manifest.parent / row["path"]).resolve(): row["label"] for row in read_csv(manifest, ("path", "label"))}
