"""Source importers: turn a raw data set on disk into a sorted list of labelled candidate files.

A candidate is either a file to decode with its label, or a file already known to be unusable with
the reason (no label, hidden file, ...). Nothing found on disk is left out of the list, so that
prepare can account for every file in `rejected.csv`.
"""

from __future__ import annotations

import csv
import os
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


def _scan(root: Path) -> tuple[list[Path], list[Candidate]]:
    """Every entry below root: regular files to use, and a rejected candidate for everything else
    (hidden, symlinked folder, dangling link, link leading out of root, device or FIFO, unreadable
    folder, non-UTF-8 name)."""
    usable: list[Path] = []
    rejected: list[Candidate] = []

    def reject(path: Path, reason: str, folder: bool = False) -> None:
        rel = _rel(root, path) + ("/" if folder else "")
        rejected.append(Candidate(_printable(rel), None, None, reason))

    def unreadable(error: OSError) -> None:
        reject(Path(error.filename), f"unreadable folder: {error.strerror}", folder=True)

    tree = Path(os.path.realpath(root))
    # followlinks=False: a symlinked folder is never walked, so the walk cannot leave the tree or loop
    # (a link to an ancestor); one pointing inside the tree would only list files a second time.
    for folder, subfolders, files in os.walk(root, onerror=unreadable, followlinks=False):
        folder_path = Path(folder)
        for name in list(subfolders):
            path = folder_path / name
            if name.startswith("."):
                subfolders.remove(name)
                reject(path, "hidden folder", True)
            elif path.is_symlink():
                subfolders.remove(name)
                reject(path, _folder_link_reason(path, tree), True)
        subfolders.sort()
        for name in sorted(files):
            path = folder_path / name
            if not _utf8(_rel(root, path)):
                reject(path, "file name is not valid UTF-8")
            elif name.startswith("."):
                reject(path, "hidden file")
            elif path.is_symlink() and not path.exists():
                reject(path, "dangling symlink")
            elif path.is_symlink() and (target := _outside(path, tree)):
                reject(path, f"symlink resolves outside the input tree (to {target})")
            elif not path.is_file():
                reject(path, "not a regular file")
            else:
                usable.append(path)
    return sorted(usable), rejected


def _outside(path: Path, tree: Path) -> str | None:
    """Where a link resolves when that is outside `tree` (the resolved input root), else None. Reading
    it would import a file the user never put in the data set (a link to ~/.ssh or /etc, say)."""
    target = Path(os.path.realpath(path))
    return None if target.is_relative_to(tree) else _printable(str(target))


def _folder_link_reason(path: Path, tree: Path) -> str:
    target = _outside(path, tree)
    if target:
        return f"symlinked folder resolves outside the input tree (to {target}); not followed"
    return "symlinked folder (not followed)"


def _printable(text: str) -> str:
    """Text that encodes as UTF-8: undecodable bytes of a file name arrive as surrogates."""
    return text.encode("utf-8", "backslashreplace").decode()


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as surrogates
        return False
    return True


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV file whose header names `columns` (among others); a missing column or a file
    that is not UTF-8 CSV is one LeafnetError line naming the file."""
    expected = ",".join(columns)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = set(columns) - set(reader.fieldnames or [])
            if missing:
                raise LeafnetError(f"{path} lacks column(s) {sorted(missing)}; expected a header with {expected}")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise LeafnetError(f"cannot read {path}: {error} (expected UTF-8 CSV with {expected})") from None


def kaggle_candidates(root: Path) -> list[Candidate]:
    """The Kaggle leaf-classification layout: `images/<id>.<ext>` and `train.csv` with id,species."""
    _require_dir(root, "input directory")
    images_dir, labels_csv = root / "images", root / "train.csv"
    _require_dir(images_dir, "images directory of the kaggle source")
    if not labels_csv.is_file():
        raise LeafnetError(f"labels file not found: {labels_csv} (the kaggle source needs train.csv with id,species)")
    rows = [
        ((row["id"] or "").strip(), (row["species"] or "").strip()) for row in read_csv(labels_csv, ("id", "species"))
    ]
    rows = [(image_id, species) for image_id, species in rows if image_id]
    if not rows:
        raise LeafnetError(f"{labels_csv} has no rows")

    files, unusable = _scan(images_dir)
    by_id: dict[str, list[Path]] = {}
    for path in files:
        by_id.setdefault(path.stem, []).append(path)
    labels: dict[str, str] = {}
    candidates = [Candidate(f"images/{c.source}", None, None, c.reason) for c in unusable]
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
    files, candidates = _scan(root)
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) == 1:
            candidates.append(Candidate(_rel(root, path), path, None, "not in a class folder"))
        else:
            candidates.append(Candidate(_rel(root, path), path, parts[0]))
    real_folders = (p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    for folder in sorted(real_folders):
        if not any(c.label == folder.name for c in candidates):
            candidates.append(Candidate(f"{folder.name}/", None, folder.name, "empty class folder"))
    return sorted(candidates, key=lambda c: c.source)


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
