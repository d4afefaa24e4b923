"""Source importers: turn a raw data set on disk into a sorted list of labelled candidate files.

A candidate is either a file to decode with its label, or a file already known to be unusable with
the reason (no label, hidden file, ...). Nothing found on disk is left out of the list, so that
prepare can account for every file in `rejected.csv`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from leafnet.errors import LeafnetError


@dataclass(frozen=True)
class Candidate:
    source: str  # path relative to the source root, with forward slashes
    path: Path | None  # None when there is no file (an id listed in a CSV without an image)
    label: str | None
    reason: str | None = None  # set when the candidate is rejected before decoding


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise LeafnetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise LeafnetError(f"{what} is not a directory: {path}")


def _visible_files(root: Path) -> tuple[list[Path], list[Path]]:
    """All regular files below root, split into visible ones and hidden ones (dot-names anywhere)."""
    visible, hidden = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).parts
        (hidden if any(part.startswith(".") for part in relative) else visible).append(path)
    return visible, hidden


def kaggle_candidates(root: Path) -> list[Candidate]:
    """The Kaggle leaf-classification layout: `images/<id>.<ext>` and `train.csv` with id,species."""
    _require_dir(root, "input directory")
    images_dir, labels_csv = root / "images", root / "train.csv"
    _require_dir(images_dir, "images directory of the kaggle source")
    if not labels_csv.is_file():
        raise LeafnetError(f"labels file not found: {labels_csv} (the kaggle source needs train.csv with id,species)")
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"id", "species"} - set(reader.fieldnames or [])
        if missing:
            raise LeafnetError(f"{labels_csv} lacks column(s) {sorted(missing)}; expected a header with id,species")
        rows = [(row["id"].strip(), (row["species"] or "").strip()) for row in reader]
    if not rows:
        raise LeafnetError(f"{labels_csv} has no rows")

    files, hidden = _visible_files(images_dir)
    by_id: dict[str, list[Path]] = {}
    for path in files:
        by_id.setdefault(path.stem, []).append(path)
    labels: dict[str, str] = {}
    candidates = [Candidate(_rel(root, p), p, None, "hidden file") for p in hidden]
    conflicting = set()
    for image_id, species in rows:
        if image_id in labels and labels[image_id] != species:
            conflicting.add(image_id)
        labels[image_id] = species
    for image_id, species in labels.items():
        if image_id not in by_id:
            reason = f"listed in train.csv (species {species}) but images/ has no file for this id"
            candidates.append(Candidate(f"images/{image_id}", None, species or None, reason))
    for image_id, paths in by_id.items():
        for path in paths:
            species = labels.get(image_id)
            if image_id in conflicting:
                reason = "train.csv gives this id two different species"
            elif len(paths) > 1:
                reason = f"id {image_id} has {len(paths)} image files; cannot tell which is meant"
            elif species is None:
                reason = "no label: id not in train.csv"
            elif not species:
                reason = "empty species in train.csv"
            else:
                reason = None
            candidates.append(Candidate(_rel(root, path), path, species or None, reason))
    return sorted(candidates, key=lambda c: c.source)


def imagefolder_candidates(root: Path) -> list[Candidate]:
    """One subfolder per class (e.g. Stanford Dogs' Images/n02085620-Chihuahua/*.jpg), nested files allowed."""
    _require_dir(root, "input directory")
    files, hidden = _visible_files(root)
    candidates = [Candidate(_rel(root, p), p, None, "hidden file") for p in hidden]
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) == 1:
            candidates.append(Candidate(_rel(root, path), path, None, "not in a class folder"))
        else:
            candidates.append(Candidate(_rel(root, path), path, parts[0]))
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any(c.label == folder.name for c in candidates):
            candidates.append(Candidate(f"{folder.name}/", None, folder.name, "empty class folder"))
    return sorted(candidates, key=lambda c: c.source)


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
